//! Which connections' clients have hung up. poem polls a connection on
//! after its client closed it, to finish the requests in flight, so their
//! futures are not dropped: a costly request would run to its end for no
//! one. hyper, though, reads a connection while a request is in flight
//! precisely to notice its end; the acceptor here watches those reads, and
//! a handler asks [`Hangup::of`] its request whether to stop. A client that
//! only shuts down its sending side counts as gone, as hyper counts it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// A connection: its two ends (unique among open connections).
type Ends = (SocketAddr, SocketAddr);

/// The open connections, each with word of its hang-up.
static OPEN: Mutex<Option<HashMap<Ends, watch::Receiver<bool>>>> = Mutex::new(None);

fn open<T>(f: impl FnOnce(&mut HashMap<Ends, watch::Receiver<bool>>) -> T) -> T {
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    f(open.get_or_insert_with(HashMap::new))
}

/// An acceptor whose connections tell when their client has hung up.
pub struct HangupsHeard<A> {
    inner: A,
}

impl<A> HangupsHeard<A> {
    pub fn new(inner: A) -> Self {
        Self { inner }
    }
}

impl<A: Acceptor> Acceptor for HangupsHeard<A> {
    type Io = Watched<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let (gone, heard) = watch::channel(false);
        let ends = local.as_socket_addr().copied().zip(remote.as_socket_addr().copied());
        if let Some(ends) = ends {
            open(|open| open.insert(ends, heard));
        }
        Ok((Watched { io, ends, gone }, local, remote, scheme))
    }
}

/// A connection that says when a read finds its end (or fails).
pub struct Watched<Io> {
    io: Io,
    ends: Option<Ends>,
    gone: watch::Sender<bool>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Watched<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        let ended = match &read {
            Poll::Ready(Ok(())) => buf.filled().len() == before && buf.remaining() > 0,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if ended {
            self.gone.send_replace(true);
        }
        read
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Watched<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<Io> Drop for Watched<Io> {
    fn drop(&mut self) {
        self.gone.send_replace(true);
        if let Some(ends) = self.ends {
            // Only this connection's word: the ends may be another's by now.
            let mine = self.gone.subscribe();
            open(|open| {
                if open.get(&ends).is_some_and(|heard| heard.same_channel(&mine)) {
                    open.remove(&ends);
                }
            });
        }
    }
}

/// Word of one request's client hanging up.
pub struct Hangup(Option<watch::Receiver<bool>>);

impl Hangup {
    /// The hang-up of the connection between these ends (never, for one
    /// not accepted by [`HangupsHeard`]).
    pub fn of(local: &LocalAddr, remote: &RemoteAddr) -> Self {
        let ends = local.as_socket_addr().copied().zip(remote.as_socket_addr().copied());
        Self(ends.and_then(|ends| open(|open| open.get(&ends).cloned())))
    }

    /// Resolves once the client has hung up.
    pub async fn heard(self) {
        match self.0 {
            Some(mut heard) => {
                // An error: the connection is gone with its sender.
                let _ = heard.wait_for(|gone| *gone).await;
            }
            None => std::future::pending().await,
        }
    }
}
