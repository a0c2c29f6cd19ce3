//! `exdaas start`, `stop`, `ping` and `status`: the original release's
//! commands for a server running in the background. `start` runs this same
//! binary's `serve` as a detached process with its output appended to the
//! log file, records its process id in the pid file and returns once
//! `/readyz` answers 200; the others find it through that file and the
//! configured address.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Settings;

/// `status` exit codes, as LSB init scripts give them: running and ready,
/// running but not ready, not running.
const STATUS_READY: u8 = 0;
const STATUS_NOT_READY: u8 = 1;
const STATUS_NOT_RUNNING: u8 = 3;

/// Lines of the log `start` shows when the server fails to come up.
const LOG_TAIL_LINES: usize = 20;

/// Where the server answers: the listen address, with a wildcard one
/// reached through the loopback interface.
pub fn base_url(settings: &Settings) -> String {
    let host = match settings.listen_addr {
        IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("http://{host}:{}", settings.port)
}

fn client(timeout: Duration) -> Result<reqwest::blocking::Client, String> {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))
}

/// What answers `path` on the configured address: its status and body, or
/// why nothing did.
fn probe(settings: &Settings, path: &str) -> Result<(u16, String), String> {
    let url = format!("{}{path}", base_url(settings));
    let answer = client(Duration::from_secs(2))?
        .get(&url)
        .send()
        .map_err(|e| format!("nothing answers at {url} ({})", root_cause(&e)))?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().unwrap_or_default()))
}

/// The innermost error's message: reqwest's outer ones only say "error
/// sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The process the pid file names, when it is alive and an exdaas (a
/// stale file, or a reused id, is not it).
fn running_pid(pid_file: &Path) -> Option<Pid> {
    let text = fs::read_to_string(pid_file).ok()?;
    let pid = Pid::from_raw(text.trim().parse::<i32>().ok().filter(|&n| n > 0)?);
    match kill(pid, None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return None,
    }
    // Where /proc tells what the process is, an id reused by another
    // program is not taken for the server.
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) if !String::from_utf8_lossy(&cmdline).contains("exdaas") => None,
        _ => Some(pid),
    }
}

/// The last lines of the file at `path` written past byte `from` (this
/// start's, not an earlier run's), reading at most its last 64 KiB.
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return "(no log)".to_owned();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if len <= from
        || file
            .seek(SeekFrom::Start(from.max(len.saturating_sub(64 * 1024))))
            .is_err()
    {
        return "(nothing logged)".to_owned();
    }
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// `exdaas start`: the server in the background, returning once ready.
pub fn start(settings: &Settings, wait: Duration) -> ExitCode {
    if settings.port == 0 {
        eprintln!("exdaas: start needs a fixed PORT, not 0: stop, ping and status find the server by it");
        return ExitCode::from(2);
    }
    let pid_file = &settings.pid_file;
    if let Some(pid) = running_pid(pid_file) {
        eprintln!(
            "exdaas: already running (pid {pid}, from {}); `exdaas stop` stops it",
            pid_file.display()
        );
        return ExitCode::FAILURE;
    }
    if let Ok((status, _)) = probe(settings, "/healthz") {
        eprintln!(
            "exdaas: something already answers at {} (HTTP {status}) without a pid file at {}: \
             another server (in the foreground?) or another program holds PORT={}",
            base_url(settings),
            pid_file.display(),
            settings.port
        );
        return ExitCode::FAILURE;
    }
    let log_file = &settings.log_file;
    let log = match OpenOptions::new().create(true).append(true).open(log_file) {
        Ok(log) => log,
        Err(e) => {
            eprintln!(
                "exdaas: cannot open the log file {} (EXDAAS_LOG_FILE): {e}",
                log_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let (out, err) = match (log.try_clone(), log.try_clone()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("exdaas: cannot share the log file {}: {e}", log_file.display());
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("exdaas: cannot find this program's own file to run it: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Its own process group: a Ctrl-C in the terminal that ran `start`
    // does not reach it. Plain text logs: the file is no terminal.
    let spawned = Command::new(&exe)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("exdaas: cannot run {}: {e}", exe.display());
            return ExitCode::FAILURE;
        }
    };
    let pid = child.id();
    if let Err(e) = crate::durable::write_atomically(pid_file, format!("{pid}\n").as_bytes()) {
        eprintln!(
            "exdaas: cannot write the pid file {} (EXDAAS_PID_FILE): {e}; stopping the server",
            pid_file.display()
        );
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let _ = child.wait();
        return ExitCode::FAILURE;
    }
    let url = base_url(settings);
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(pid_file);
            eprintln!(
                "exdaas: the server exited before it was ready ({status}); the end of {}:",
                log_file.display()
            );
            eprintln!("{}", log_tail(log_file, log_start));
            return ExitCode::FAILURE;
        }
        if matches!(probe(settings, "/readyz"), Ok((200, _))) {
            println!(
                "exdaas started: pid {pid}, serving {url} (log {}, pid file {})",
                log_file.display(),
                pid_file.display()
            );
            return ExitCode::SUCCESS;
        }
        if started.elapsed() >= wait {
            eprintln!(
                "exdaas: the server (pid {pid}) is not ready after {} s and keeps starting; \
                 `exdaas status` follows it, `exdaas stop` stops it. The end of {}:",
                wait.as_secs(),
                log_file.display()
            );
            eprintln!("{}", log_tail(log_file, log_start));
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `exdaas stop`: SIGTERM, then wait while the server finishes its
/// requests, drains its writers and closes its files.
pub fn stop(settings: &Settings) -> ExitCode {
    let pid_file = &settings.pid_file;
    let Some(pid) = running_pid(pid_file) else {
        let stale = pid_file.exists();
        if stale {
            let _ = fs::remove_file(pid_file);
        }
        if let Ok((status, _)) = probe(settings, "/healthz") {
            eprintln!(
                "exdaas: a server answers at {} (HTTP {status}) but was not started by `exdaas start` \
                 (no running pid in {}): stop it where it runs",
                base_url(settings),
                pid_file.display()
            );
            return ExitCode::FAILURE;
        }
        println!(
            "exdaas is not running{}",
            if stale { " (removed a stale pid file)" } else { "" }
        );
        return ExitCode::SUCCESS;
    };
    if let Err(e) = kill(pid, Signal::SIGTERM) {
        eprintln!("exdaas: cannot signal pid {pid}: {e}");
        return ExitCode::FAILURE;
    }
    println!("stopping exdaas (pid {pid}): finishing requests in flight and draining the writers");
    // The server's own bound on requests in flight, plus time to drain the
    // writers and checkpoint.
    let patience = settings.shutdown_timeout + Duration::from_secs(30);
    let started = Instant::now();
    while started.elapsed() < patience {
        if kill(pid, None).is_err() {
            let _ = fs::remove_file(pid_file);
            println!("exdaas stopped in {:.1} s", started.elapsed().as_secs_f64());
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "exdaas: pid {pid} is still running {} s after SIGTERM; see {}",
        patience.as_secs(),
        settings.log_file.display()
    );
    ExitCode::FAILURE
}

/// `exdaas ping`: `pong` when the server answers, exit 1 when not.
pub fn ping(settings: &Settings) -> ExitCode {
    match probe(settings, "/healthz") {
        Ok((200, _)) => {
            println!("pong");
            ExitCode::SUCCESS
        }
        Ok((status, _)) => {
            eprintln!("exdaas: {} answers /healthz with HTTP {status}", base_url(settings));
            ExitCode::FAILURE
        }
        Err(why) => {
            eprintln!("exdaas: not responding: {why}");
            ExitCode::FAILURE
        }
    }
}

/// `exdaas status`: the process, and what `/readyz` says.
pub fn status(settings: &Settings) -> ExitCode {
    let url = base_url(settings);
    match running_pid(&settings.pid_file) {
        Some(pid) => println!("pid {pid} (from {})", settings.pid_file.display()),
        None => println!("no running server recorded in {}", settings.pid_file.display()),
    }
    match probe(settings, "/readyz") {
        Ok((status, body)) => {
            let shown = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            let verdict = if status == 200 { "ready" } else { "running, NOT ready" };
            println!("{url}: {verdict} (HTTP {status})\n{shown}");
            ExitCode::from(if status == 200 { STATUS_READY } else { STATUS_NOT_READY })
        }
        Err(why) => {
            println!("not running: {why}");
            ExitCode::from(STATUS_NOT_RUNNING)
        }
    }
}
