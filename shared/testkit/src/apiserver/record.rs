//! What the fake saw: each connection (TCP bytes, TLS outcome, the decrypted bytes in order) and
//! each request (method, path, query, headers in wire order with duplicates, body).
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Index into [`crate::apiserver::FakeApiserver::connections`].
    pub connection: usize,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header lines in the order they arrived, duplicates kept, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl RecordedRequest {
    /// The first value of header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Path plus `?query` when there is one.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// One accepted TCP connection.
#[derive(Clone, Debug)]
pub struct ConnectionRecord {
    pub peer: SocketAddr,
    pub accepted_at: Instant,
    /// Bytes read off the TCP socket (TLS records included).
    pub tcp_bytes: u64,
    /// Whether the TLS handshake completed.
    pub tls_established: bool,
    pub tls_error: Option<String>,
    /// Application bytes after TLS decryption, in the order they arrived, with the time each
    /// read happened (offset into `plaintext`, instant).
    pub plaintext: Vec<u8>,
    pub reads: Vec<(usize, Instant)>,
    pub closed: bool,
    /// How far request heads have been matched against `plaintext`.
    pub(crate) head_cursor: usize,
}

impl ConnectionRecord {
    pub(crate) fn new(peer: SocketAddr) -> ConnectionRecord {
        ConnectionRecord {
            peer,
            accepted_at: Instant::now(),
            tcp_bytes: 0,
            tls_established: false,
            tls_error: None,
            plaintext: Vec::new(),
            reads: Vec::new(),
            closed: false,
            head_cursor: 0,
        }
    }

    /// Plaintext bytes that arrived after `t`.
    pub fn bytes_after(&self, t: Instant) -> &[u8] {
        match self.reads.iter().find(|(_, at)| *at > t) {
            Some((offset, _)) => &self.plaintext[*offset..],
            None => &[],
        }
    }

    /// Finds the head of the request `method target` after the previous one and returns its
    /// header lines in wire order.
    pub(crate) fn take_head(&mut self, method: &str, target: &str) -> Option<Vec<(String, Vec<u8>)>> {
        let line = format!("{method} {target} HTTP/");
        let from = self.head_cursor.min(self.plaintext.len());
        let rel = self.plaintext[from..].windows(line.len()).position(|w| w == line.as_bytes())?;
        let start = from + rel;
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.plaintext[start..]) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return None,
        };
        let out = req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
        self.head_cursor = start + len;
        Some(out)
    }
}

pub(crate) type SharedConn = Arc<Mutex<ConnectionRecord>>;

/// The TCP socket, counting bytes read; resets (RST) instead of closing when asked to.
pub(crate) struct CountingTcp {
    pub inner: TcpStream,
    pub record: SharedConn,
    pub reset_on_drop: Arc<AtomicBool>,
}

impl Drop for CountingTcp {
    fn drop(&mut self) {
        if self.reset_on_drop.load(Ordering::SeqCst) {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
        if let Ok(mut r) = self.record.lock() {
            r.closed = true;
        }
    }
}

impl AsyncRead for CountingTcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.record.lock().unwrap().tcp_bytes += n as u64;
        }
        res
    }
}

impl AsyncWrite for CountingTcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The decrypted stream, keeping a copy of every byte read.
pub(crate) struct RecordingIo<S> {
    pub inner: S,
    pub record: SharedConn,
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordingIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut r = self.record.lock().unwrap();
            let offset = r.plaintext.len();
            r.reads.push((offset, Instant::now()));
            r.plaintext.extend_from_slice(&buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordingIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
