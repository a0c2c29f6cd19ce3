//! The listener: accepted connections are closed once their peer takes no
//! bytes for `EXDAAS_SEND_TIMEOUT_SECS`. A client that opens an event
//! stream, or any large answer, and then stops reading would otherwise hold
//! its connection, its answer's next page and its place among the feed's
//! followers for as long as the kernel keeps the socket.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio_io_timeout::TimeoutStream;

/// An acceptor whose connections fail their writes after `send_timeout`
/// without progress, which ends them and drops what they held.
pub struct StalledPeersClosed<A> {
    inner: A,
    send_timeout: Duration,
}

impl<A> StalledPeersClosed<A> {
    pub fn new(inner: A, send_timeout: Duration) -> Self {
        Self { inner, send_timeout }
    }
}

impl<A: Acceptor> Acceptor for StalledPeersClosed<A> {
    type Io = Pin<Box<TimeoutStream<A::Io>>>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(self.send_timeout));
        Ok((Box::pin(io), local, remote, scheme))
    }
}
