//! The HTTP server's connections: accepting them, serving each with hyper
//! and poem's endpoint, and the bounds that keep a client from holding the
//! server's resources without using them.
//!
//! - At most `EXDAAS_MAX_CONNECTIONS` at once; past it, a new connection is
//!   answered 503 and closed at once, and the ones open are untouched.
//! - A connection must send a whole request head within
//!   `EXDAAS_HEAD_TIMEOUT_SECS` of opening, or of the head's first byte
//!   (slow clients sending a header line now and then).
//! - A connection with nothing in flight is closed after
//!   `EXDAAS_IDLE_TIMEOUT_SECS` without a byte.
//! - An answer that its client does not take for `EXDAAS_SEND_TIMEOUT_SECS`
//!   ends its connection: over HTTP/1.1 the socket's writes stall, over
//!   HTTP/2 the stream's window stays shut and nothing is written at all,
//!   so both the socket and each answer's body are watched.
//! - HTTP/2 over cleartext (prior knowledge) only when `EXDAAS_HTTP2` is
//!   on, with at most `EXDAAS_HTTP2_MAX_STREAMS` streams per connection.
//!
//! poem's own `Server` offers none of the first three and no way to turn
//! HTTP/2 off, so the accept loop is here; routing, extractors and
//! everything above are poem's as before.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::http::uri::Scheme;
use poem::{Endpoint, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_io_timeout::TimeoutStream;

use crate::metrics::Metrics;

/// The body type poem's responses convert into.
type ResponseBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// What a connection may hold and for how long.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub http2: bool,
    pub http2_max_streams: u32,
}

/// The first bytes of every HTTP/2 connection (RFC 9113 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a refused connection is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\n\
content-length: 41\r\nconnection: close\r\n\r\nthe server has all the connections it takes";

/// Serves `endpoint` on `listener` until `stop` resolves; then stops
/// accepting, lets the requests in flight finish for at most
/// `drain_timeout`, and closes whatever is left.
pub async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    let endpoint = Arc::new(endpoint);
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // `Draining` asks connections to finish what they hold; `Closing`
    // drops them.
    let (phase, phase_rx) = watch::channel(Phase::Serving);
    let local = listener.local_addr()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors or memory: accepting again at
                        // once would spin. The connections open go on.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.connection_closed("refused");
                    refuse(stream);
                    continue;
                };
                let connection = Connection {
                    endpoint: endpoint.clone(),
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    phase: phase_rx.clone(),
                    local,
                    peer,
                };
                tokio::spawn(async move {
                    connection.serve(stream).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    phase.send_replace(Phase::Draining);
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_timeout, slots.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!(
            open = limits.max_connections - slots.available_permits(),
            "connections still open after the shutdown timeout; closing them"
        );
        phase.send_replace(Phase::Closing);
        let _ = slots.acquire_many(max).await;
    }
    Ok(())
}

/// Answers 503 on a connection over the cap and closes it, without
/// waiting for the client: what the socket takes at once is all it gets.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(BUSY);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

struct Connection<E> {
    endpoint: Arc<E>,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    phase: watch::Receiver<Phase>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl<E: Endpoint<Output = Response> + 'static> Connection<E> {
    async fn serve(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let mut socket = TimeoutStream::new(stream);
        socket.set_write_timeout(Some(self.limits.send_timeout));
        let io = WatchedSocket {
            inner: Box::pin(socket),
            activity: activity.clone(),
            first_read: true,
        };
        let service = {
            let activity = activity.clone();
            let endpoint = self.endpoint.clone();
            let local = poem::web::LocalAddr(poem::Addr::SocketAddr(self.local));
            let remote = poem::web::RemoteAddr(poem::Addr::SocketAddr(self.peer));
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let in_flight = activity.request_started();
                let endpoint = endpoint.clone();
                let request = poem::Request::from((request, local.clone(), remote.clone(), Scheme::HTTP));
                async move {
                    let response: hyper::Response<ResponseBody> = endpoint.get_response(request).await.into();
                    // Handed to hyper: from now on the answer waits on
                    // its client until hyper takes its bytes.
                    in_flight.waiting.store(now_ms(), Ordering::Relaxed);
                    Ok::<_, Infallible>(response.map(|body| WatchedBody {
                        inner: body,
                        in_flight,
                        rest: Bytes::new(),
                    }))
                }
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.limits.http2_max_streams)
            .max_pending_accept_reset_streams(Some(20))
            .max_header_list_size(16 << 10);
        if !self.limits.http2 {
            builder = builder.http1_only();
        }
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let tick = (self
            .limits
            .head_timeout
            .min(self.limits.idle_timeout)
            .min(self.limits.send_timeout)
            / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut checks = tokio::time::interval(tick);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            tokio::select! {
                _ = &mut connection => return,
                changed = self.phase.changed() => {
                    let phase = if changed.is_ok() { *self.phase.borrow() } else { Phase::Closing };
                    match phase {
                        Phase::Serving => {}
                        Phase::Draining if !draining => {
                            draining = true;
                            connection.as_mut().graceful_shutdown();
                        }
                        Phase::Draining => {}
                        Phase::Closing => return,
                    }
                }
                _ = checks.tick() => match activity.verdict(&self.limits) {
                    None => {}
                    Some(Verdict::Idle) if !draining => {
                        draining = true;
                        self.metrics.connection_closed("idle");
                        connection.as_mut().graceful_shutdown();
                    }
                    Some(Verdict::Idle) => {}
                    Some(verdict) => {
                        let reason = verdict.reason();
                        tracing::debug!(peer = %self.peer, reason, "closing a connection");
                        self.metrics.connection_closed(reason);
                        return;
                    }
                },
            }
        }
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing in flight and no byte for the idle timeout.
    Idle,
    /// A request head begun (or a connection opened) and not finished
    /// within the head timeout.
    SlowHead,
    /// An answer its client has not taken for the send timeout.
    Stalled,
}

impl Verdict {
    fn reason(self) -> &'static str {
        match self {
            Verdict::Idle => "idle",
            Verdict::SlowHead => "head_timeout",
            Verdict::Stalled => "stalled",
        }
    }
}

/// Milliseconds since the process's first use of this clock: a cheap,
/// monotonic stamp that fits an atomic.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What one connection has done lately, written by its socket and its
/// requests, read by its checks.
struct Activity {
    /// Requests whose answer is not yet fully handed to hyper.
    in_flight: AtomicUsize,
    /// When a byte was last read, or an answer last finished.
    last_active: AtomicU64,
    /// When the request head being read began (0: none is). A new
    /// connection counts as one begun.
    head_since: AtomicU64,
    /// Spoke the HTTP/2 preface: heads come as frames, with no slow form
    /// to time.
    http2: AtomicBool,
    /// Each answer's body: when it last gave hyper bytes that hyper has not
    /// come back for (0: it is waiting on the server, not the client).
    bodies: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Activity {
    fn new() -> Self {
        let now = now_ms();
        Self {
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(now),
            head_since: AtomicU64::new(now),
            http2: AtomicBool::new(false),
            bodies: Mutex::new(Vec::new()),
        }
    }

    fn bytes_read(&self, bytes: &[u8], first: bool) {
        let now = now_ms();
        self.last_active.store(now, Ordering::Relaxed);
        if first && bytes.starts_with(&HTTP2_PREFACE[..bytes.len().min(HTTP2_PREFACE.len())]) {
            self.http2.store(true, Ordering::Relaxed);
            self.head_since.store(0, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.http2.load(Ordering::Relaxed) {
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A whole request head arrived: its answer is in flight until the
    /// returned guard (moved into the answer's body) is dropped.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        let waiting = Arc::new(AtomicU64::new(0));
        self.bodies.lock().push(waiting.clone());
        InFlight {
            activity: self.clone(),
            waiting,
        }
    }

    fn verdict(&self, limits: &ConnectionLimits) -> Option<Verdict> {
        let now = now_ms();
        let older_than =
            |since: u64, limit: Duration| since != 0 && now.saturating_sub(since) > limit.as_millis() as u64;
        if self
            .bodies
            .lock()
            .iter()
            .any(|waiting| older_than(waiting.load(Ordering::Relaxed), limits.send_timeout))
        {
            return Some(Verdict::Stalled);
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if older_than(self.head_since.load(Ordering::Relaxed), limits.head_timeout) {
            return Some(Verdict::SlowHead);
        }
        if older_than(self.last_active.load(Ordering::Relaxed), limits.idle_timeout) {
            return Some(Verdict::Idle);
        }
        None
    }
}

/// One request from its head to its answer's end (or until it is dropped,
/// when the client goes away or the stream is reset).
struct InFlight {
    activity: Arc<Activity>,
    waiting: Arc<AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.last_active.store(now_ms(), Ordering::Relaxed);
        self.activity
            .bodies
            .lock()
            .retain(|waiting| !Arc::ptr_eq(waiting, &self.waiting));
    }
}

pin_project_lite::pin_project! {
    /// The socket, telling its connection's [`Activity`] of every read.
    struct WatchedSocket<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        first_read: bool,
    }
}

impl<T: AsyncRead> AsyncRead for WatchedSocket<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.activity.bytes_read(read, std::mem::take(this.first_read));
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for WatchedSocket<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The most of an answer handed to hyper at once. Over HTTP/2, hyper hands
/// a chunk to the stream as soon as its window has room for a byte, and
/// the stream keeps all of it until the client's window takes it: a client
/// that opens a tiny window and never more would hold a whole page (up to
/// `EXDAAS_MAX_PAGE_BYTES`) per stream, with its answer's body finished
/// and no longer watched. In slices, the body gives hyper the next slice
/// only as the last one goes out, so a stream holds at most two slices
/// and one that stops taking them is seen. The slices share the chunk's
/// bytes (no copy).
const SLICE_BYTES: usize = 16 << 10;

pin_project_lite::pin_project! {
    /// An answer's body, telling its connection whether it waits on the
    /// client; its [`InFlight`] ends when hyper drops it.
    struct WatchedBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
        // What is left of a chunk larger than a slice.
        rest: Bytes,
    }
}

impl<B: Body<Data = Bytes>> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = if this.rest.is_empty() {
            match this.inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) if data.len() > SLICE_BYTES => {
                        *this.rest = data.split_off(SLICE_BYTES);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let take = this.rest.len().min(SLICE_BYTES);
            Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(take)))))
        };
        // Bytes handed over: until hyper comes back for more, the answer
        // waits on its client. Pending or done: not on the client.
        let waiting = match &polled {
            Poll::Ready(Some(Ok(_))) => now_ms(),
            _ => 0,
        };
        this.in_flight.waiting.store(waiting, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}
