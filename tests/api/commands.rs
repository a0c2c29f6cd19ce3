//! `exdaas start`, `stop`, `ping` and `status`: the server in the
//! background, found through its pid file and address. Process control is
//! the same on every engine: these run on a data folder only.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{exdaas, skip_on_postgres, Run, ServerProcess};

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// `exdaas <args>` for the server on `data` at `port`.
async fn control(data: &Path, port: u16, args: &[&str]) -> Run {
    let port = port.to_string();
    exdaas(data, args, &[("PORT", &port), ("EXDAAS_LISTEN_ADDR", "127.0.0.1")]).await
}

/// The pid `start` recorded beside the data folder.
fn recorded_pid(data: &Path) -> i32 {
    let text = std::fs::read_to_string(data.with_extension("pid")).expect("pid file beside the data folder");
    text.trim().parse().expect("a pid")
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test]
async fn start_serves_in_the_background_until_stop_and_refuses_a_second_one() {
    if skip_on_postgres("process control is the same on every engine") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let data = folder.path().join("data");
    let port = free_port();

    let started = control(&data, port, &["start"]).await;
    assert_eq!(started.code, Some(0), "{}", started.said());
    assert!(
        started.stdout.contains(&format!("http://127.0.0.1:{port}")),
        "{}",
        started.said()
    );
    let pid = recorded_pid(&data);
    assert!(alive(pid));
    assert!(
        data.with_extension("log").exists(),
        "the log file is beside the data folder"
    );

    // It serves, from the background: the command above has returned.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/collections/users/docs/alice");
    let put = client
        .put(&url)
        .json(&json!({"name": "Alice"}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201);

    let ping = control(&data, port, &["ping"]).await;
    assert_eq!((ping.code, ping.stdout.trim()), (Some(0), "pong"), "{}", ping.said());
    let status = control(&data, port, &["status"]).await;
    assert_eq!(status.code, Some(0), "{}", status.said());
    assert!(status.stdout.contains(&format!("pid {pid}")), "{}", status.said());
    assert!(status.stdout.contains("\"status\": \"ready\""), "{}", status.said());

    let again = control(&data, port, &["start"]).await;
    assert_eq!(again.code, Some(1), "{}", again.said());
    assert!(again.stderr.contains("already running"), "{}", again.said());
    assert_eq!(recorded_pid(&data), pid, "the refused start left the pid file alone");

    let stopped = control(&data, port, &["stop"]).await;
    assert_eq!(stopped.code, Some(0), "{}", stopped.said());
    assert!(!alive(pid), "stop returns once the process is gone");
    assert!(!data.with_extension("pid").exists(), "stop removes the pid file");

    let ping = control(&data, port, &["ping"]).await;
    assert_eq!(ping.code, Some(1), "{}", ping.said());
    let status = control(&data, port, &["status"]).await;
    assert_eq!(status.code, Some(3), "{}", status.said());
    let stop_again = control(&data, port, &["stop"]).await;
    assert_eq!(stop_again.code, Some(0), "{}", stop_again.said());
    assert!(stop_again.stdout.contains("not running"), "{}", stop_again.said());

    // Started again over the same folder, it has the document.
    let restarted = control(&data, port, &["start"]).await;
    assert_eq!(restarted.code, Some(0), "{}", restarted.said());
    let got: serde_json::Value = client.get(&url).send().await.expect("get").json().await.expect("json");
    assert_eq!(got["data"], json!({"name": "Alice"}));
    let stopped = control(&data, port, &["stop"]).await;
    assert_eq!(stopped.code, Some(0), "{}", stopped.said());
}

#[tokio::test]
async fn stop_waits_until_every_acknowledged_write_is_on_disk() {
    if skip_on_postgres("process control is the same on every engine") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let data = folder.path().join("data");
    let port = free_port();
    let started = control(&data, port, &["start"]).await;
    assert_eq!(started.code, Some(0), "{}", started.said());
    let pid = recorded_pid(&data);

    // Writers keep going until the server stops answering.
    let client = reqwest::Client::new();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let id = format!("w{writer}-{n}");
                let url = format!("http://127.0.0.1:{port}/v1/collections/load/docs/{id}");
                match client.put(&url).json(&json!({"n": n})).send().await {
                    Ok(answer) if answer.status() == 201 => acknowledged.push(id),
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = control(&data, port, &["stop"]).await;
    assert_eq!(stopped.code, Some(0), "{}", stopped.said());
    assert!(!alive(pid), "stop returned before the process ended");
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert!(
        acknowledged.len() > 50,
        "only {} writes before the stop",
        acknowledged.len()
    );

    let restarted = control(&data, port, &["start"]).await;
    assert_eq!(restarted.code, Some(0), "{}", restarted.said());
    for id in &acknowledged {
        let url = format!("http://127.0.0.1:{port}/v1/collections/load/docs/{id}");
        let answer = client.get(&url).send().await.expect("get");
        assert_eq!(answer.status(), 200, "acknowledged write {id} lost by the stop");
    }
    let stopped = control(&data, port, &["stop"]).await;
    assert_eq!(stopped.code, Some(0), "{}", stopped.said());
}

#[tokio::test]
async fn start_fails_with_the_logs_last_lines_when_the_folder_is_in_use() {
    if skip_on_postgres("process control is the same on every engine") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    let data = folder.path().join("data");
    std::fs::create_dir(&data).expect("data folder");
    // A server in the foreground holds the folder.
    let foreground = ServerProcess::start(&data, &[]).await;

    let refused = control(&data, free_port(), &["start"]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.said());
    assert!(
        refused.stderr.contains("exited before it was ready"),
        "{}",
        refused.said()
    );
    assert!(
        refused.stderr.contains("another exdaas process"),
        "the log's reason is shown: {}",
        refused.said()
    );
    assert!(
        !data.with_extension("pid").exists(),
        "no pid file for a server that did not start"
    );
    // Nor does stop touch a server it did not start.
    let not_ours = control(&data, foreground.port, &["stop"]).await;
    assert_eq!(not_ours.code, Some(1), "{}", not_ours.said());
    assert!(
        not_ours.stderr.contains("not started by `exdaas start`"),
        "{}",
        not_ours.said()
    );
    let health = reqwest::get(foreground.url("/healthz")).await.expect("still up");
    assert_eq!(health.status(), 200);
    drop(foreground);

    // A pid file left by a server that died names no running process:
    // stop says so and removes it.
    std::fs::write(data.with_extension("pid"), "999999999\n").expect("stale pid file");
    let stale = control(&data, free_port(), &["stop"]).await;
    assert_eq!(stale.code, Some(0), "{}", stale.said());
    assert!(stale.stdout.contains("removed a stale pid file"), "{}", stale.said());
    assert!(!data.with_extension("pid").exists());

    // A bad setting stops it before anything runs, naming the setting.
    let bad = exdaas(&data, &["start"], &[("EXDAAS_SYNC", "sometimes")]).await;
    assert_eq!(bad.code, Some(2), "{}", bad.said());
    assert!(bad.stderr.contains("EXDAAS_SYNC"), "{}", bad.said());
    let no_port = exdaas(&data, &["start"], &[("PORT", "0")]).await;
    assert_eq!(no_port.code, Some(2), "{}", no_port.said());
    assert!(no_port.stderr.contains("PORT"), "{}", no_port.said());
}
