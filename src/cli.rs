//! The command line: `exdaas` serves in the foreground; settings come from the
//! environment or a TOML file, listed by `--help`.

use clap::{Parser, Subcommand};

use crate::config::SETTINGS;

#[derive(Debug, Parser)]
#[command(name = "exdaas", version, about = "A serialized, fault tolerant, self caching, self sharding JSON document database", after_long_help = settings_help(), after_help = settings_help())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve in the foreground (what running with no command does)
    #[command(alias = "foreground")]
    Serve,
}

fn settings_help() -> String {
    let mut help = String::from(
        "Settings (environment variable, or the key in a TOML file named by EXDAAS_CONFIG; the environment wins):\n",
    );
    for s in SETTINGS {
        help.push_str(&format!(
            "  {:<30} {:<22} default {:<10} {}\n",
            s.env, s.key, s.default, s.meaning
        ));
    }
    help.push_str("  RUST_LOG                       log filter, e.g. info or exdaas=debug\n");
    help
}
