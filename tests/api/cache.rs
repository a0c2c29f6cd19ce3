//! The cache never answers with a value older than an acknowledged write:
//! concurrent writers and readers hammer the same keys through a cache small
//! enough to keep evicting, so reads keep missing and racing with commits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::helpers::json;

const KEYS: usize = 96;
const WRITERS: u64 = 4;
const WRITES_EACH: usize = 500;
const READERS: usize = 8;

/// Small deterministic generator, so a failure can be replayed.
fn next_random(state: &mut u64) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % KEYS as u64) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_returns_a_version_older_than_an_acknowledged_write() {
    let app = Arc::new(spawn_app_with_small_cache().await);
    // 96 documents of ~16 KiB against a 1 MiB cache: constant eviction.
    let padding = "p".repeat(16 * 1024);
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let writing = Arc::new(AtomicBool::new(true));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (app, acked, padding) = (app.clone(), acked.clone(), padding.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (w + 1);
            for n in 0..WRITES_EACH {
                let k = next_random(&mut rng);
                let resp = app
                    .put_doc("hammer", &k.to_string(), &json!({"w": w, "n": n, "pad": padding}))
                    .await;
                assert!(resp.status().is_success(), "write failed: {}", resp.status());
                let version = json(resp).await["version"].as_u64().expect("version");
                acked[k].fetch_max(version, Ordering::SeqCst);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (app, acked, writing) = (app.clone(), acked.clone(), writing.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = 0xD1B5_4A32_D192_ED03 ^ (r as u64 + 1);
            let mut reads = 0u64;
            while writing.load(Ordering::SeqCst) {
                let k = next_random(&mut rng);
                let floor = acked[k].load(Ordering::SeqCst);
                let resp = app.get_doc("hammer", &k.to_string()).await;
                let seen = match resp.status().as_u16() {
                    200 => json(resp).await["version"].as_u64().expect("version"),
                    404 => 0,
                    other => panic!("read failed with {other}"),
                };
                assert!(
                    seen >= floor,
                    "key {k}: read version {seen} after version {floor} was acknowledged"
                );
                reads += 1;
            }
            reads
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    writing.store(false, Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    assert!(reads > 500, "the readers ran: {reads} reads");
}

async fn spawn_app_with_small_cache() -> crate::helpers::TestApp {
    let folder = tempfile::tempdir().expect("temp dir");
    let mut app = crate::helpers::spawn_app_on(folder.path(), &[("EXDAAS_CACHE_MIB", "1")]).await;
    app.keep_folder(folder);
    app
}
