//! `exdaas console`: an interactive shell against a running exdaas, the
//! way `redis-cli` and `etcdctl` are, or one command from the command line
//! for scripts (`exdaas console get users alice`).
//!
//! A line is a command, its words, and for those that take a document the
//! rest of the line as JSON, unquoted: `put users alice {"name": "Alice"}`.
//! Exit codes of a scripted command: 0 done, 1 the server refused (the
//! reason on stderr), 2 a mistake in the command, 3 the server cannot be
//! reached.

mod client;
mod commands;
mod shell;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

pub use client::{Api, ClientError};
use commands::execute;

/// Runs the shell, or `command` when given; `url` defaults to the server
/// the settings describe.
pub fn run(url: &str, key: Option<String>, command: &[String]) -> ExitCode {
    let api = match Api::new(url, key) {
        Ok(api) => Arc::new(api),
        Err(e) => {
            eprintln!("exdaas console: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C ends a watch, not the console (in the shell's prompt it is a
    // key, read by the line editor).
    if let Err(e) = ctrlc::set_handler(commands::interrupt) {
        tracing::debug!(error = %e, "no Ctrl-C handler");
    }
    if command.is_empty() {
        return shell::run(api);
    }
    let line = command.join(" ");
    let mut out = std::io::stdout().lock();
    match execute(&api, &line, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("exdaas console: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
