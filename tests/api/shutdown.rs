//! SIGTERM under load: the binary stops accepting, finishes what is in flight,
//! drains its writers and exits 0; every acknowledged write is there after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{json, spawn_app_on, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_writers_and_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(data.path(), &[("EXDAAS_SYNC", "full")]).await;
    let port = server.port;

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
    server.signal("TERM");
    let status = server.wait().await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let log = server.log_text();
    assert_eq!(status, Some(0), "exit status; log:\n{log}");
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
