//! In-process store benchmark, the successor of the original's
//! `scripts/console.bench.sh`: no HTTP, just the store.
//!
//! Writes 20,001 documents cold (new ids), then the same 20,001 again warm
//! (equal data: the no-op path), then anonymous creates, from `CONCURRENCY`
//! tasks at once, and prints operations per second and CPU time per operation.
//!
//! `cargo run --release --example console_bench` (env: SHARD_LIMIT, EXDAAS_SYNC,
//! BENCH_OPS, BENCH_CONCURRENCY).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use exdaas::domain::{CollectionName, DocId, DocKey};
use exdaas::store::Store;
use exdaas::Settings;
use serde_json::json;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

async fn run<F, Fut>(label: &str, ops: usize, concurrency: usize, op: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let cpu = cpu_seconds();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < ops {
                op(i).await;
                i += concurrency;
            }
        }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            eprintln!("task failed: {e}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "{label:<28} {ops:>7} ops  {:>10.0} ops/s  {:>6.1} us CPU/op",
        ops as f64 / secs,
        cpu * 1e6 / ops as f64
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut env: HashMap<String, String> = std::env::vars().collect();
    env.insert("DETS_ROOT".into(), dir.path().to_string_lossy().into_owned());
    let settings = Settings::from_env(env)?;
    let ops: usize = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_001);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let options = exdaas::app::store_options(&settings, std::sync::Arc::new(exdaas::stats::NoEvents));
    let store = Store::open(options).await?;
    println!(
        "shards={} sync={} concurrency={concurrency}",
        settings.shards.get(),
        settings.sync.as_str()
    );
    let key = |i: usize| DocKey::new(CollectionName::legacy(), DocId::from_integer(i as i64));
    for label in ["upsert cold (new ids)", "upsert warm (equal data)"] {
        let s = store.clone();
        run(label, ops, concurrency, move |i| {
            let s = s.clone();
            async move {
                if let Err(e) = s.put(key(i), &json!({"color": "blue"})).await {
                    eprintln!("put failed: {e}");
                }
            }
        })
        .await;
    }
    let s = store.clone();
    run("anonymous creates", ops, concurrency, move |_| {
        let s = s.clone();
        async move {
            if let Err(e) = s
                .create(CollectionName::legacy(), &json!({"color": "blue"}), None)
                .await
            {
                eprintln!("create failed: {e}");
            }
        }
    })
    .await;
    store.shutdown().await;
    Ok(())
}
