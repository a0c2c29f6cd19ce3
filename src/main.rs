//! The `exdaas` binary: read settings, set up logging and tracing, serve
//! until signalled, flush the last spans.

use std::process::ExitCode;

use clap::Parser;
use exdaas::cli::{Cli, Command};
use exdaas::{app, telemetry, Application, Settings};

/// mimalloc: the service allocates per request and per document; glibc's and
/// especially musl's (the Alpine image) allocators are measurably slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    files_private_to_this_user();
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    // The console and the background-server commands are plain blocking
    // programs; the server and the data folder commands need a runtime.
    if let Some(code) = exdaas::cli::run_control(&command) {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("exdaas: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match command {
            Command::Serve => serve().await,
            other => exdaas::cli::run_maintenance(other).await,
        }
    })
}

/// What the process creates (the data folder and its shards, backups, the
/// pid and log files) is its user's alone: umask 077 on top of the one it
/// was given (under the usual 022, files were readable by every local user).
fn files_private_to_this_user() {
    #[cfg(unix)]
    {
        use nix::sys::stat::{umask, Mode};
        let private = Mode::from_bits_truncate(0o077);
        let given = umask(private);
        umask(given | private);
    }
}

async fn serve() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("exdaas: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(settings.log_format, &settings.traces);
    // Installed before the (possibly long) boot, so SIGTERM is never fatal.
    let stop = app::shutdown_signal();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            // Logs first (they are buffered), so the reason is the last line.
            telemetry.shutdown().await;
            eprintln!("exdaas: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let served = app.run_until_stopped(stop).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exdaas: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
