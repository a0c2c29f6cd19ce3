//! Memory per request is bounded in bytes, not only in counts: a listing,
//! a batch's answer and an export of large documents stay within the page
//! budget (`EXDAAS_MAX_PAGE_BYTES`), measured on the real binary's resident
//! memory.

use serde_json::{json, Value};

use crate::helpers::{json, spawn_app_with, ServerProcess};

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak resident size (VmHWM) to the current one.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
}

const MIB: usize = 1 << 20;

/// Pages through collection `big` a thousand at a time; answers how many
/// documents it saw, checking each page holds at most two.
async fn list_all(client: &reqwest::Client, server: &ServerProcess) -> usize {
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = server.url("/v1/collections/big/docs?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client
            .get(url)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("a page");
        let items = page["items"].as_array().expect("items");
        assert!(
            (1..=2).contains(&items.len()),
            "a 2 MiB budget holds two documents of 1 MiB: {} items",
            items.len()
        );
        seen += items.len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_large_documents_stays_within_the_page_budget() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(
        folder.path(),
        &[
            ("EXDAAS_MAX_BODY_BYTES", "2097152"),
            ("EXDAAS_MAX_PAGE_BYTES", "2097152"),
            // Nothing cached, and one reader per shard (each with SQLite's
            // 2 MiB page cache): what is measured is the listing's own memory.
            ("EXDAAS_CACHE_MIB", "0"),
            ("EXDAAS_READ_CONNECTIONS", "1"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let count = 48;
    let large = "x".repeat(MIB - 64);
    for n in 0..count {
        let resp = client
            .put(server.url(&format!("/v1/collections/big/docs/d{n:03}")))
            .json(&json!({"n": n, "text": large}))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 201);
    }
    let pid = server.child.id().expect("running");
    // Once through every page first, so what any listing needs once (the
    // readers' page caches, connections, statements) is there before the
    // measure, and the writes' own work is over.
    assert_eq!(list_all(&client, &server).await, count);

    let before = status_kib(pid, "VmRSS:");
    reset_peak(pid);
    assert_eq!(list_all(&client, &server).await, count);
    let peak = status_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("listing grew the server by {growth_mib} MiB");
    // A page's documents are in memory about three times over (rows read,
    // the documents, the answer), plus SQLite's page cache of each shard's
    // reader (2 MiB each, 4 shards) and some slack. Without the budget, one
    // page of this listing held all 48 MiB of documents, several times.
    let bound_mib = 3 * 2 + 4 * 2 + 10;
    assert!(
        growth_mib <= bound_mib,
        "listing 48 documents of 1 MiB grew the server by {growth_mib} MiB, over {bound_mib} MiB \
         (from {before} KiB to a peak of {peak} KiB)"
    );

    // An export of the same documents, read as it streams.
    let before = status_kib(pid, "VmRSS:");
    reset_peak(pid);
    let mut resp = client
        .get(server.url("/v1/collections/big/export"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = resp.chunk().await.expect("a chunk") {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines, count);
    assert!(bytes > count * (MIB - 64));
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) / 1024;
    eprintln!("exporting grew the server by {growth_mib} MiB");
    assert!(growth_mib <= bound_mib, "exporting grew the server by {growth_mib} MiB");
}

#[tokio::test]
async fn a_batch_answer_leaves_out_data_past_the_page_budget() {
    let app = spawn_app_with(&[("EXDAAS_MAX_PAGE_BYTES", "262144"), ("EXDAAS_MAX_BODY_BYTES", "262144")]).await;
    let doc = json!("y".repeat(100_000));
    assert_eq!(app.put_doc("c", "big", &doc).await.status(), 201);
    // A small request whose answer would be a thousand times the document.
    let ops: Vec<Value> = (0..1000).map(|_| json!({"op": "get", "id": "big"})).collect();
    let resp = app.batch("c", json!(ops)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    assert!(text.len() < 1 << 20, "the answer holds {} bytes", text.len());
    let results: Value = serde_json::from_str(&text).expect("JSON");
    let results = results["results"].as_array().expect("results");
    assert_eq!(results.len(), 1000, "every operation is answered");
    assert!(results.iter().all(|r| r["status"] == 200 && r["doc"]["version"] == 1));
    let with_data = results.iter().filter(|r| r["doc"].get("data").is_some()).count();
    assert_eq!(with_data, 2, "two documents fit in 256 KiB");
    let detail = results[999]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("/v1/collections/c/docs/big"), "{detail}");
    let full = json(app.get_doc("c", "big").await).await;
    assert_eq!(full["data"], doc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reading_many_large_documents_stays_within_the_page_budget() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(
        folder.path(),
        &[
            ("EXDAAS_MAX_PAGE_BYTES", "2097152"),
            ("EXDAAS_CACHE_MIB", "0"),
            ("EXDAAS_READ_CONNECTIONS", "1"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let count = 160;
    let large = "z".repeat(256 << 10);
    for n in 0..count {
        let resp = client
            .put(server.url(&format!("/v1/collections/many/docs/d{n:03}")))
            .json(&json!(large))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 201);
    }
    let pid = server.child.id().expect("running");
    let batch = |op: &'static str| {
        let ops: Vec<Value> = (0..count)
            .map(|n| json!({"op": op, "id": format!("d{n:03}")}))
            .collect();
        client
            .post(server.url("/v1/collections/many/batch"))
            .json(&json!({ "ops": ops }))
            .send()
    };
    // Once, so what any batch needs once is there before the measure.
    let results: Value = batch("get").await.expect("sent").json().await.expect("JSON");
    let statuses: Vec<u64> = results["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    let read = statuses.iter().filter(|s| **s == 200).count();
    assert!((7..=8).contains(&read), "2 MiB of 256 KiB documents: {statuses:?}");
    assert!(statuses.iter().all(|s| matches!(s, 200 | 413)), "{statuses:?}");
    let refused = &results["results"][count - 1];
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("request of its own"),
        "{refused}"
    );

    let before = status_kib(pid, "VmRSS:");
    reset_peak(pid);
    assert_eq!(batch("get").await.expect("sent").status(), 200);
    // Deletes read no text at all.
    let deleted: Value = batch("delete").await.expect("sent").json().await.expect("JSON");
    assert!(deleted["results"]
        .as_array()
        .expect("results")
        .iter()
        .all(|r| r["status"] == 204));
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) / 1024;
    eprintln!("a batch over 40 MiB of documents grew the server by {growth_mib} MiB");
    // Without the budget, each batch read all 40 MiB of them.
    assert!(
        growth_mib <= 16,
        "a batch over 40 MiB of documents grew the server by {growth_mib} MiB"
    );
}

/// A cache setting is a ceiling, not an allocation: a server told it may
/// cache 64 GiB starts on an empty folder as small as one with the default.
/// (Sizing the cache's table for the whole setting at boot took 2 GiB.)
#[tokio::test]
async fn a_large_cache_setting_costs_nothing_until_it_is_filled() {
    let folder = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(folder.path(), &[("EXDAAS_CACHE_MIB", "65536")]).await;
    let pid = server.child.id().expect("running");
    let resident_mib = status_kib(pid, "VmRSS:") / 1024;
    assert!(
        resident_mib < 128,
        "an empty server with EXDAAS_CACHE_MIB=65536 holds {resident_mib} MiB"
    );
    let resp = reqwest::get(server.url("/readyz")).await.expect("request sent");
    assert_eq!(resp.status(), 200);
}
