//! SIGTERM under load: the binary stops accepting, finishes what is in flight,
//! drains its writers and exits 0; every acknowledged write is there after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{json, spawn_app_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_writers_and_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_exdaas"))
        .env("DETS_ROOT", data.path())
        .env("PORT", "0")
        .env("EXDAAS_LISTEN_ADDR", "127.0.0.1")
        .env("EXDAAS_SYNC", "full")
        .env("EXDAAS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("exdaas starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let port = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("server logs within 30 s")
            .expect("stderr readable")
            .expect("server did not exit before listening");
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        if event["fields"]["message"] == "exdaas listening" {
            break event["fields"]["port"].as_u64().expect("port logged");
        }
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let drain = {
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().expect("log").push(line);
            }
        })
    };

    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{w}-{i}");
                let body = json!({"writer": w, "seq": i});
                let url = format!("http://127.0.0.1:{port}/v1/collections/load/docs/{id}");
                match client.put(&url).json(&body).send().await {
                    Ok(resp) if resp.status().is_success() => acked.lock().expect("acked").push((id, body)),
                    Ok(_) | Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .expect("wait");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let _ = drain.await;
    let log = log.lock().expect("log").join("\n");
    assert_eq!(status.code(), Some(0), "exit status; log:\n{log}");
    assert!(log.contains("every writer drained"), "log:\n{log}");

    let acked = acked.lock().expect("acked").clone();
    assert!(
        acked.len() > 50,
        "the load got going: {} writes acknowledged",
        acked.len()
    );
    let app = spawn_app_on(data.path(), &[]).await;
    for (id, body) in &acked {
        let resp = app.get_doc("load", id).await;
        assert_eq!(resp.status(), 200, "acknowledged write {id} lost");
        assert_eq!(&json(resp).await["data"], body, "{id}");
    }
    app.stop().await;
}
