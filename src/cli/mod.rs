//! The command line: `exdaas` serves in the foreground (settings from the
//! environment or a TOML file, listed by `--help`); `start`, `stop`, `ping`
//! and `status` run it in the background (see `daemon`); `console` talks to
//! a running one (see `console`); the others operate on the data folder
//! (`DETS_ROOT`): backup, restore, check and reshard, and migrate (between
//! it and a PostgreSQL-protocol database).

pub mod console;
pub mod daemon;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Settings, SETTINGS};
use crate::domain::ShardCount;
use crate::store::maintenance;

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
    /// Serve in the background: the log goes to EXDAAS_LOG_FILE, the process
    /// id to EXDAAS_PID_FILE (default DETS_ROOT.log and DETS_ROOT.pid).
    /// Returns once /readyz answers 200, or fails with the log's last lines.
    /// Refused while a server runs. Exit 1 when it did not come up.
    Start {
        /// Seconds to wait for the server to be ready
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        wait: u64,
    },
    /// Stop the server `start` started: SIGTERM, then wait while it finishes
    /// requests in flight, drains its writers and closes its files.
    Stop,
    /// Say `pong` (exit 0) when the server answers, exit 1 when it does not.
    Ping,
    /// The server's process and what /readyz says. Exit 0 ready, 1 running
    /// but not ready, 3 not running.
    Status,
    /// An interactive shell against a running exdaas (get, put, patch,
    /// delete, list, batch, import, export, watch, collections, health), or
    /// one command for scripts: `exdaas console get users alice`. Exit 0
    /// done, 1 refused by the server, 2 a mistake in the command, 3 the
    /// server cannot be reached.
    Console {
        /// The server [default: http://127.0.0.1:PORT]
        #[arg(long, env = "EXDAAS_URL")]
        url: Option<String>,
        /// An API key, sent as a bearer token
        #[arg(long, env = "EXDAAS_API_KEY", hide_env_values = true)]
        key: Option<String>,
        /// A command to run instead of the shell, e.g. get users alice
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Take a consistent snapshot of every shard of DETS_ROOT into DEST, with
    /// a manifest of document counts and checksums. Safe while the server runs.
    Backup {
        /// A new or empty folder to write the backup to
        dest: PathBuf,
    },
    /// Restore the backup SRC into DETS_ROOT, which must be empty or not
    /// exist. The manifest, checksums, counts and integrity are verified
    /// first. DETS_ROOT is locked while it runs.
    Restore {
        /// A folder written by `exdaas backup`
        src: PathBuf,
    },
    /// Check every shard of DETS_ROOT: SQLite's integrity check, and that every
    /// document sits in the shard its id hashes to. Read-only: safe while the
    /// server runs. Exit code 1 if it finds a problem.
    Check,
    /// Move DETS_ROOT to another number of shards. Run it with the server
    /// stopped (it refuses otherwise); a crash midway leaves the old shards in
    /// use. Then start the server with SHARD_LIMIT=N.
    Reshard {
        /// The new number of shards (1 to 4096)
        #[arg(long)]
        to: u32,
    },
    /// Copy DETS_ROOT into a PostgreSQL-protocol database (--to URL), or a
    /// database into an empty DETS_ROOT (--from URL), then verify the copy:
    /// each collection's count and checksum read back from the target.
    /// Documents keep their versions; the change feed starts afresh. --to
    /// needs the server stopped and a database exdaas has not written to;
    /// --from copies one snapshot, so replicas may keep serving. A URL
    /// given on the command line can be read by every local user (ps,
    /// /proc): give one with a password in an environment variable, named
    /// by --to-env or --from-env (e.g. --to-env EXDAAS_DATABASE_URL).
    /// Passwords are never printed.
    #[command(group(clap::ArgGroup::new("direction").required(true).args(["to", "from", "to_env", "from_env"])))]
    Migrate {
        /// The database to copy DETS_ROOT into (postgres://...)
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// The database to copy into DETS_ROOT (postgres://...)
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// As --to, with the URL read from this environment variable
        #[arg(long, value_name = "VAR")]
        to_env: Option<String>,
        /// As --from, with the URL read from this environment variable
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
    },
}

fn settings_help() -> String {
    let mut help = String::from(
        "Settings (environment variable, or the key in a TOML file named by EXDAAS_CONFIG; the environment wins):\n",
    );
    for s in SETTINGS {
        help.push_str(&format!(
            "  {:<30} {:<22} default {:<10} {}\n",
            s.env,
            s.key,
            s.default,
            s.meaning_text()
        ));
    }
    help.push_str("  RUST_LOG                       log filter, e.g. info or exdaas=debug\n");
    help
}

/// Runs the commands that need no runtime of their own: those about a
/// server running in the background, and the console. `None`: `command`
/// is another one.
pub fn run_control(command: &Command) -> Option<ExitCode> {
    if !matches!(
        command,
        Command::Start { .. } | Command::Stop | Command::Ping | Command::Status | Command::Console { .. }
    ) {
        return None;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("exdaas: {e}");
            return Some(ExitCode::from(2));
        }
    };
    Some(match command {
        Command::Start { wait } => daemon::start(&settings, std::time::Duration::from_secs(*wait)),
        Command::Stop => daemon::stop(&settings),
        Command::Ping => daemon::ping(&settings),
        Command::Status => daemon::status(&settings),
        Command::Console { url, key, command } => {
            let url = url.clone().unwrap_or_else(|| daemon::base_url(&settings));
            console::run(&url, key.clone(), command)
        }
        _ => return None,
    })
}

/// Runs one of the data folder commands (everything but `serve`).
pub async fn run_maintenance(command: Command) -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("exdaas: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Migrate {
        to,
        from,
        to_env,
        from_env,
    } = command
    {
        let (into_database, url) = match migration_url(to, from, to_env, from_env) {
            Ok(direction) => direction,
            Err(message) => {
                eprintln!("exdaas: {message}");
                return ExitCode::from(2);
            }
        };
        let logs = crate::telemetry::init(settings.log_format, &crate::config::TraceExport::Off);
        let outcome = migrate(&settings.data_dir, into_database, &url).await;
        logs.shutdown().await;
        return match outcome {
            Ok(code) => code,
            Err(e) => {
                eprintln!("exdaas: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if settings.database_url.is_some() {
        let from = settings.database_url_from;
        eprintln!(
            "exdaas: backup, restore, check and reshard work on a data folder (DETS_ROOT), and \
             {from} is set: on a database, use its own tools (pg_dump and pg_restore \
             for backups); unset {from} to work on DETS_ROOT"
        );
        return ExitCode::from(2);
    }
    // Logs only: these commands export no traces.
    let logs = crate::telemetry::init(settings.log_format, &crate::config::TraceExport::Off);
    let root = settings.data_dir;
    let outcome = match command {
        Command::Serve
        | Command::Migrate { .. }
        | Command::Start { .. }
        | Command::Stop
        | Command::Ping
        | Command::Status
        | Command::Console { .. } => return ExitCode::from(2),
        Command::Backup { dest } => backup(&root, &dest).await,
        Command::Restore { src } => restore(&src, &root).await,
        Command::Check => check(&root).await,
        Command::Reshard { to } => reshard(&root, to).await,
    };
    // Logs first (they are buffered), so the reason is the last line.
    logs.shutdown().await;
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("exdaas: {e}");
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<ExitCode, crate::store::StoreError>;

async fn backup(root: &std::path::Path, dest: &std::path::Path) -> Outcome {
    println!("backing up {} to {}", root.display(), dest.display());
    let started = std::time::Instant::now();
    let manifest = maintenance::backup(root, dest).await?;
    for file in &manifest.files {
        println!(
            "  shard {:>4}: {:>10} documents, {:>12} bytes, sha256 {}",
            file.shard, file.documents, file.bytes, file.sha256
        );
    }
    println!(
        "backup complete: {} shards, {} documents in {:.1} s; manifest at {}",
        manifest.shards,
        manifest.documents(),
        started.elapsed().as_secs_f64(),
        dest.join(maintenance::MANIFEST_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn restore(src: &std::path::Path, root: &std::path::Path) -> Outcome {
    println!(
        "verifying the backup {} and restoring it into {}",
        src.display(),
        root.display()
    );
    let manifest = maintenance::restore(src, root).await?;
    println!(
        "restore complete: {} shards, {} documents; start the server with SHARD_LIMIT={}",
        manifest.shards,
        manifest.documents(),
        manifest.shards
    );
    Ok(ExitCode::SUCCESS)
}

async fn check(root: &std::path::Path) -> Outcome {
    let reports = maintenance::check(root).await?;
    let mut problems = 0;
    for report in &reports {
        let verdict = if report.problems.is_empty() { "ok" } else { "PROBLEMS" };
        println!(
            "  shard {:>4}: {:>10} documents  {verdict}  ({})",
            report.shard,
            report.documents,
            report.path.display()
        );
        for problem in report.problems.iter().take(20) {
            println!("      {problem}");
        }
        if report.problems.len() > 20 {
            println!("      ... and {} more", report.problems.len() - 20);
        }
        problems += report.problems.len();
    }
    let documents: u64 = reports.iter().map(|r| r.documents).sum();
    if problems == 0 {
        println!("check passed: {} shards, {documents} documents", reports.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("check FAILED: {problems} problems in {} shards", reports.len());
        Ok(ExitCode::FAILURE)
    }
}

async fn reshard(root: &std::path::Path, to: u32) -> Outcome {
    let Some(to) = ShardCount::new(to) else {
        eprintln!(
            "exdaas: --to {to}: expected a shard count from 1 to {}",
            ShardCount::MAX
        );
        return Ok(ExitCode::from(2));
    };
    println!("resharding {} to {} shards", root.display(), to.get());
    let report = maintenance::reshard(root, to).await?;
    if report.from == report.to {
        println!("nothing to do: the folder already has {} shards", report.to);
    } else {
        println!(
            "reshard complete: {} -> {} shards, {} documents moved and verified in {:.1} s; start the server with SHARD_LIMIT={}",
            report.from,
            report.to,
            report.documents,
            report.elapsed.as_secs_f64(),
            report.to
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Which way `migrate` goes (`true`: into the database) and the database's
/// URL, from the command line or the environment variable it names.
fn migration_url(
    to: Option<String>,
    from: Option<String>,
    to_env: Option<String>,
    from_env: Option<String>,
) -> Result<(bool, String), String> {
    let from_env_var = |flag: &str, name: String| match std::env::var(&name) {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => Err(format!("{flag} {name}: the environment variable {name} is not set")),
    };
    let (into_database, url) = match (to, from, to_env, from_env) {
        (Some(url), ..) => (true, url),
        (_, Some(url), ..) => (false, url),
        (_, _, Some(name), _) => (true, from_env_var("--to-env", name)?),
        (_, _, _, Some(name)) => (false, from_env_var("--from-env", name)?),
        (None, None, None, None) => return Err("say --to, --from, --to-env or --from-env".into()),
    };
    Ok((into_database, url))
}

async fn migrate(root: &std::path::Path, into_database: bool, url: &str) -> Outcome {
    use crate::store::maintenance::{Progress, Stage};
    let shown = crate::config::redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        eprintln!("exdaas: {shown}: expected a postgres:// or postgresql:// URL");
        return Ok(ExitCode::from(2));
    }
    // A line every couple of seconds, and when a stage ends.
    let mut last_line = std::time::Instant::now();
    let mut report = |p: Progress| {
        if p.done < p.total && last_line.elapsed() < std::time::Duration::from_secs(2) {
            return;
        }
        last_line = std::time::Instant::now();
        let verb = match p.stage {
            Stage::Copying => "copied",
            Stage::Verifying => "verified",
        };
        let percent = (p.done * 100).checked_div(p.total).unwrap_or(100);
        let rate = p.done as f64 / p.elapsed.as_secs_f64().max(0.001);
        println!("  {verb} {} of {} documents ({percent}%), {rate:.0}/s", p.done, p.total);
    };
    if shown != url && std::env::args().any(|arg| arg.contains(url)) {
        eprintln!(
            "exdaas: warning: the database URL on the command line holds a secret that every local user \
             can read (ps, /proc); give it in an environment variable with --to-env or --from-env"
        );
    }
    let migrated = if into_database {
        println!("migrating {} into {shown}", root.display());
        maintenance::folder_to_database(root, url, &mut report).await?
    } else {
        println!("migrating {shown} into {}", root.display());
        maintenance::database_to_folder(url, root, &mut report).await?
    };
    for (name, collection) in &migrated.tally.collections {
        println!(
            "  {name:<24} {:>10} documents  checksum {}  ok",
            collection.documents,
            collection.checksum()
        );
    }
    let next = if into_database {
        format!(
            "start the replicas with EXDAAS_DATABASE_URL={shown} SHARD_LIMIT={}",
            migrated.shards
        )
    } else {
        format!(
            "start the server with DETS_ROOT={} SHARD_LIMIT={}",
            root.display(),
            migrated.shards
        )
    };
    println!(
        "migrate complete: {} documents in {} collections copied and verified in {:.1} s; {next}",
        migrated.tally.documents(),
        migrated.tally.collections.len(),
        migrated.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
