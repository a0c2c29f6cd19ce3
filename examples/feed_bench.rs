//! What the change feed delivers, and what it costs the writes.
//!
//! Runs the server in process (its own runtime) over a fresh folder and
//! drives the original's write load at it: keep-alive `POST /api` upserts
//! from `BENCH_WRITERS` clients, over 10,000 ids so that every write is a
//! change. Three phases of `BENCH_SECONDS` each, in one run: no subscriber
//! (the baseline), 1, then `BENCH_SUBSCRIBERS` (50) event-stream
//! subscribers of `GET /v1/changes`. For each it prints the writes per
//! second and their ratio to the baseline, the changes each subscriber
//! received per second, and the delay from a change's commit (its
//! `updated_at`) to its arrival, p50 and p99.
//!
//! `scripts/feed.bench.sh` (or `cargo run --release --example feed_bench`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use exdaas::{Application, Settings};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The commit time in one change's JSON, as Unix milliseconds.
fn updated_at_ms(data: &str) -> Option<i64> {
    let start = data.find("\"updated_at\":\"")? + "\"updated_at\":\"".len();
    let text = data.get(start..start + 24)?;
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// What one subscriber saw during a phase.
#[derive(Default)]
struct Received {
    changes: u64,
    delays_ms: Vec<u32>,
    /// The server ended the stream before the phase did.
    cut: bool,
}

/// Follows the feed from now by event stream until `stop`, counting the
/// changes that arrive while `counting` is set.
async fn subscribe(
    client: reqwest::Client,
    base: String,
    counting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) -> Received {
    let mut received = Received::default();
    let resp = client
        .get(format!("{base}/v1/changes?since=now"))
        .header("Accept", "text/event-stream")
        .send()
        .await;
    ready.fetch_add(1, Ordering::SeqCst);
    let Ok(mut resp) = resp else { return received };
    // Cheap on the client's side, which shares the machine: complete
    // events are counted by their data lines, and every 8th one's delay is
    // taken.
    let mut buffer: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let chunk = match tokio::time::timeout(Duration::from_millis(200), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(_) => {
                received.cut = true;
                break;
            }
            Err(_) => continue,
        };
        buffer.extend_from_slice(&chunk);
        let Some(end) = buffer.windows(2).rposition(|w| w == b"\n\n") else {
            continue;
        };
        if counting.load(Ordering::Relaxed) {
            let arrived = now_ms();
            for line in buffer[..end].split(|&b| b == b'\n') {
                let Some(data) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                received.changes += 1;
                if received.changes % 8 == 0 {
                    if let Some(at) = std::str::from_utf8(data).ok().and_then(updated_at_ms) {
                        received.delays_ms.push((arrived - at).clamp(0, u32::MAX as i64) as u32);
                    }
                }
            }
        }
        buffer.drain(..end + 2);
    }
    received
}

/// Writes from `writers` clients for `seconds`; answers the writes done.
async fn write_load(client: &reqwest::Client, base: &str, writers: u64, seconds: u64) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (client, url, done) = (client.clone(), format!("{base}/api"), done.clone());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    let body = format!("{{\"id\":{},\"data\":{{\"n\":{i}}}}}", i % 10_000 + 1);
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    if matches!(sent, Ok(resp) if resp.status().is_success()) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += writers;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let seconds = setting("BENCH_SECONDS", 10);
    let writers = setting("BENCH_WRITERS", 64);
    let many = setting("BENCH_SUBSCRIBERS", 50);
    let folder = match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(e) => return eprintln!("no temporary folder: {e}"),
    };
    let env = [
        ("PORT", "0".to_owned()),
        ("EXDAAS_LISTEN_ADDR", "127.0.0.1".to_owned()),
        ("DETS_ROOT", folder.path().display().to_string()),
        ("EXDAAS_FEED_MAX_SUBSCRIBERS", (many + 8).to_string()),
        (
            "SHARD_LIMIT",
            std::env::var("SHARD_LIMIT").unwrap_or_else(|_| "4".into()),
        ),
        (
            "EXDAAS_SYNC",
            std::env::var("EXDAAS_SYNC").unwrap_or_else(|_| "normal".into()),
        ),
    ];
    let settings = match Settings::from_env(env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()) {
        Ok(settings) => settings,
        Err(e) => return eprintln!("{e}"),
    };

    // The server on a runtime of its own, as it would run alone.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return eprintln!("no runtime: {e}"),
        };
        runtime.block_on(async move {
            let app = match Application::build(settings).await {
                Ok(app) => app,
                Err(e) => return eprintln!("the server did not start: {e}"),
            };
            let _ = port_tx.send(app.port());
            let _ = app
                .run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let Ok(port) = port_rx.recv() else { return };
    let base = format!("http://127.0.0.1:{port}");

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return eprintln!("no runtime: {e}"),
    };
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(writers as usize + many as usize)
            .build()
            .unwrap_or_default();
        println!(
            "feed bench: {writers} writers (POST /api upserts over 10,000 ids), {seconds} s per phase, {} shards",
            env_shards()
        );
        println!(
            "{:<16} {:>10} {:>8} {:>16} {:>10} {:>10}",
            "subscribers", "writes/s", "ratio", "changes/s each", "p50 ms", "p99 ms"
        );
        // Warm up: ids created, connections open.
        write_load(&client, &base, writers, 2).await;
        let mut baseline = 0.0;
        for subscribers in [0, 1, many] {
            let counting = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let ready = Arc::new(AtomicU64::new(0));
            let followers: Vec<_> = (0..subscribers)
                .map(|_| {
                    tokio::spawn(subscribe(
                        client.clone(),
                        base.clone(),
                        counting.clone(),
                        stop.clone(),
                        ready.clone(),
                    ))
                })
                .collect();
            while ready.load(Ordering::SeqCst) < subscribers {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            counting.store(true, Ordering::SeqCst);
            let started = Instant::now();
            let writes = write_load(&client, &base, writers, seconds).await;
            let elapsed = started.elapsed().as_secs_f64();
            // What was committed in the window may still be on its way.
            tokio::time::sleep(Duration::from_millis(500)).await;
            counting.store(false, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            let mut changes = 0;
            let mut cut = 0;
            let mut delays = Vec::new();
            for follower in followers {
                if let Ok(received) = follower.await {
                    changes += received.changes;
                    cut += u64::from(received.cut);
                    delays.extend(received.delays_ms);
                }
            }
            if cut > 0 {
                println!("!! the server ended {cut} of {subscribers} streams early");
            }
            delays.sort_unstable();
            let rate = writes as f64 / elapsed;
            if subscribers == 0 {
                baseline = rate;
            }
            let each = if subscribers == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", changes as f64 / subscribers as f64 / elapsed)
            };
            let (p50, p99) = if delays.is_empty() {
                ("-".to_owned(), "-".to_owned())
            } else {
                (
                    percentile(&delays, 0.50).to_string(),
                    percentile(&delays, 0.99).to_string(),
                )
            };
            println!(
                "{subscribers:<16} {rate:>10.0} {:>8.2} {each:>16} {p50:>10} {p99:>10}",
                if baseline > 0.0 { rate / baseline } else { 0.0 }
            );
        }
    });
    let _ = stop_tx.send(());
    let _ = server.join();
}

fn env_shards() -> String {
    std::env::var("SHARD_LIMIT").unwrap_or_else(|_| "4".into())
}
