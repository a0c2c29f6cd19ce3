//! Counting every collection reads every shard's collection index whole
//! (its work grows with the documents, not with the answer), and any key
//! that reads everything may ask for it. So one such count runs at a time,
//! and every request that arrived before it began takes its result: however
//! many ask at once, at most one count runs and one waits, and no answer is
//! older than its request.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

/// The last count and when it began, shared by the requests that wait.
#[derive(Debug)]
pub struct SharedCount<T> {
    /// How many counts have begun.
    begun: AtomicU64,
    /// The last count's result and its place in that order; held while a
    /// count runs, so the next one waits for it.
    last: Mutex<Option<(u64, Arc<T>)>>,
}

impl<T> Default for SharedCount<T> {
    fn default() -> Self {
        Self {
            begun: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }
}

impl<T> SharedCount<T> {
    /// A result of `count` that began after this call did: the running
    /// count's, if it began since, or a new one's.
    pub async fn get<E, F, Fut>(&self, count: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let arrived = self.begun.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if let Some((began, result)) = last.as_ref() {
            if *began > arrived {
                return Ok(result.clone());
            }
        }
        let began = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let result = Arc::new(count().await?);
        *last = Some((began, result.clone()));
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn requests_at_once_share_at_most_two_counts() {
        let shared = Arc::new(SharedCount::<usize>::default());
        let counts = Arc::new(AtomicUsize::new(0));
        let asks = (0..50).map(|_| {
            let (shared, counts) = (shared.clone(), counts.clone());
            tokio::spawn(async move {
                shared
                    .get(|| async {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok::<_, ()>(counts.fetch_add(1, Ordering::SeqCst) + 1)
                    })
                    .await
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Ok(_)))));
        assert!(
            counts.load(Ordering::SeqCst) <= 2,
            "{} counts",
            counts.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn a_request_after_a_count_gets_a_new_one() {
        let shared = SharedCount::<u32>::default();
        let first = shared.get(|| async { Ok::<_, ()>(1) }).await;
        let second = shared.get(|| async { Ok::<_, ()>(2) }).await;
        assert_eq!((*first.expect("counted"), *second.expect("counted")), (1, 2));
    }
}
