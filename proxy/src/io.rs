//! Byte plumbing on monoio's owned buffers: a connection that is plain TCP or TLS, appending
//! reads, whole writes, and waiting for data without a buffer.
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::tls::{ClientTls, TlsStream};

/// Size of every relay buffer (monoio's own copy uses 4 KiB, which halves throughput).
pub const BUFFER: usize = 64 * 1024;

/// An upstream connection.
pub enum Conn {
    Plain(TcpStream),
    Tls(ClientTls),
}

// Reads and writes of both variants are independent (both are `Split`).
unsafe impl Split for Conn {}

impl AsyncReadRent for Conn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.readv(buf).await,
            Conn::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Conn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.write(buf).await,
            Conn::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Conn::Plain(s) => s.writev(buf).await,
            Conn::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush().await,
            Conn::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        }
    }
}

/// Waiting until a read would not wait, holding no buffer: a stream that idles for an hour
/// should not keep a read buffer for that hour. (With io_uring this is one more operation
/// than a read, so only paths that expect to wait use it.)
#[allow(async_fn_in_trait)]
pub trait Readable {
    async fn readable(&mut self) -> io::Result<()>;

    /// Once `readable` has returned: what came (nothing, after a spurious wake-up; bytes a reader
    /// can take; or the peer's end: EOF, close_notify, a reset, a failed session).
    fn came(&mut self) -> Came;

    /// Whether bytes have come that no reader took, waiting in the socket (a peek) or, on TLS,
    /// held by the session. Any time, not only after `readable`.
    fn holds_input(&mut self) -> bool;
}

/// What a connection holds now, without taking it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Came {
    Nothing,
    Bytes,
    End,
}

impl Readable for TcpStream {
    async fn readable(&mut self) -> io::Result<()> {
        TcpStream::readable(self, false).await
    }

    fn came(&mut self) -> Came {
        peek(self)
    }

    fn holds_input(&mut self) -> bool {
        peek(self) == Came::Bytes
    }
}

impl<C, D> Readable for TlsStream<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    async fn readable(&mut self) -> io::Result<()> {
        TlsStream::readable(self).await
    }

    fn came(&mut self) -> Came {
        TlsStream::came(self)
    }

    fn holds_input(&mut self) -> bool {
        !self.drained() || peek(self) == Came::Bytes
    }
}

impl Conn {
    /// Whether nothing that came in is held unread on this side: always on plain (reads go
    /// straight to the caller); on TLS, no ciphertext, plaintext or close_notify in the session
    /// (what a read that filled its buffer may leave there). No system call.
    pub fn drained(&mut self) -> bool {
        match self {
            Conn::Plain(_) => true,
            Conn::Tls(s) => s.drained(),
        }
    }

    /// True while nothing has arrived on this idle connection: no data, no end, no error,
    /// neither in the socket nor (TLS) already read into the session. A pooled connection
    /// should receive nothing between exchanges, so anything else (the upstream's FIN, its
    /// close_notify, a reset) means it must not be reused.
    pub fn quiet(&mut self) -> bool {
        match self {
            Conn::Plain(s) => quiet(s),
            Conn::Tls(s) => s.drained() && quiet(s),
        }
    }

    /// At most how many bytes of the upstream's data this side has read off the socket and not
    /// yet handed out. Plain: none (reads go straight to the caller). TLS: the ciphertext not yet
    /// given to rustls, plus [`TLS_HELD_MAX`] for what rustls itself may hold.
    pub fn held(&self) -> usize {
        match self {
            Conn::Plain(_) => 0,
            Conn::Tls(s) => s.unfed() + TLS_HELD_MAX,
        }
    }

    /// The socket's receive low-water mark now (a pooled connection's must be 1).
    pub fn wake_mark(&self) -> io::Result<usize> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value` and the length into `len`.
        let r = unsafe {
            libc::getsockopt(self.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&raw mut value).cast(), &mut len)
        };
        if r == 0 {
            Ok(value as usize)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sets the socket's receive low-water mark (`SO_RCVLOWAT`): the kernel wakes a waiting read
    /// only once this many bytes have arrived (or the peer ended, or the window is closing).
    pub fn wake_at(&self, bytes: usize) -> io::Result<()> {
        set_int_option(self.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
    }
}

/// `setsockopt` of one integer option (clamped to a C int): the socket settings of the proxy
/// (low-water marks, keepalive, the send timeout) all take one.
pub fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one c_int from `value`.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Conn::Plain(s) => s.as_raw_fd(),
            Conn::Tls(s) => s.as_raw_fd(),
        }
    }
}

/// The most rustls (0.23.46, Cargo.lock) may hold of a TLS connection's received data beyond
/// the ciphertext it was not yet given: its deframer buffer (18 437 bytes, one record; up to
/// 65 535 while it joins a handshake message split over records, such as a session ticket) and
/// the decrypted plaintext, which `read_tls` lets grow past its 16 KiB limit only by what the
/// deframer held. About 80 KiB in all; rounded up.
const TLS_HELD_MAX: usize = 128 * 1024;

/// True while the socket holds nothing to read and no error: a peek that never waits, takes
/// no bytes and holds no buffer.
fn quiet(socket: &impl AsRawFd) -> bool {
    peek(socket) == Came::Nothing
}

/// What a socket holds now: the peer's FIN and any error (a reset) are its end.
fn peek(socket: &impl AsRawFd) -> Came {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`.
    let n = unsafe { libc::recv(socket.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        0 => Came::End,
        1.. => Came::Bytes,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Came::Nothing,
        _ => Came::End,
    }
}

impl Readable for Conn {
    async fn readable(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => TcpStream::readable(s, false).await,
            Conn::Tls(s) => s.readable().await,
        }
    }

    fn came(&mut self) -> Came {
        match self {
            Conn::Plain(s) => peek(s),
            Conn::Tls(s) => s.came(),
        }
    }

    fn holds_input(&mut self) -> bool {
        match self {
            Conn::Plain(s) => s.holds_input(),
            Conn::Tls(s) => s.holds_input(),
        }
    }
}

/// TCP keepalive: a peer that vanished without a FIN (a dead node, a partition, a laptop that
/// slept, a NAT that forgot) fails the connection within [`KEEPALIVE_IDLE`] + 6 ×
/// [`KEEPALIVE_INTERVAL`] of silence (2 minutes), so a watch, a body or an idle exec tunnel
/// waiting on it ends instead of holding its sockets for good. Set once per connection, on
/// both legs (`which` names the leg in the log); nothing per request.
///
/// `cut_after` (clients' sockets: `send_timeout_seconds`) also cuts the connection once data
/// written to it has gone unacknowledged that long (`TCP_USER_TIMEOUT`): a client that stopped
/// reading (its window stays shut) or vanished. The kernel keeps the clock, so no write of the
/// request path carries a timer. The kernel then also ends a connection that has been silent
/// that long at its first unanswered keepalive probe, so one lost probe of a watch idle over the
/// internet would end it: the probes start and follow each other sooner ([`probes_within`]), six
/// of them inside that time. (Not for upstream sockets, whose idle watches to distant
/// apiservers keep the defaults; their request bodies carry a timer instead.)
pub fn keep_alive(tcp: &TcpStream, which: &str, cut_after: Option<std::time::Duration>) {
    let fd = tcp.as_raw_fd();
    let (idle, interval) = match cut_after {
        Some(limit) => {
            let ms = usize::try_from(limit.as_millis()).unwrap_or(usize::MAX);
            if let Err(e) = set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms) {
                tracing::debug!(error = %e, which, "cannot set TCP_USER_TIMEOUT");
            }
            probes_within(limit)
        }
        None => (KEEPALIVE_IDLE.as_secs(), KEEPALIVE_INTERVAL.as_secs()),
    };
    let done = set_int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
        .and_then(|()| set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle as usize))
        .and_then(|()| set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval as usize))
        .and_then(|()| set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6));
    if let Err(e) = done {
        tracing::debug!(error = %e, which, "cannot set TCP keepalive");
    }
}

/// Keepalive's idle time and probe interval, in seconds, for a socket cut after `limit` of
/// silence: six probes before `limit` where it allows (5 s apart from 30 s for the default
/// 60 s), never later than the defaults, never under a second.
pub fn probes_within(limit: std::time::Duration) -> (u64, u64) {
    let limit = limit.as_secs();
    let interval = (limit / 12).clamp(1, KEEPALIVE_INTERVAL.as_secs());
    let idle = limit.saturating_sub(6 * interval).clamp(1, KEEPALIVE_IDLE.as_secs());
    (idle, interval)
}

pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// monoio's `time::timeout` with its timer on the heap. monoio's `Sleep` is 640 bytes aligned to
/// 128: inline, it pads every future that holds it and every future above that, up to the
/// connection's task, which an idle watch keeps for hours. Err: `limit` passed first.
///
/// A timer is not kept for reuse: monoio's timer keeps the waker of the first task that polled
/// it until it fires, so a timer reused by another task wakes the wrong one (tried; the metrics
/// listener's idle connections then outlived their timeout).
pub async fn timeout<F: std::future::Future>(limit: std::time::Duration, work: F) -> Result<F::Output, ()> {
    let mut timer = Box::pin(monoio::time::sleep(limit));
    let mut work = std::pin::pin!(work);
    monoio::select! {
        out = &mut work => Ok(out),
        _ = &mut timer => Err(()),
    }
}

/// Whether a client whose connection is to close has sent more than the request answered (its
/// next request, read already or waiting in the socket): closed with bytes unread, the kernel
/// resets the connection, which drops what of the answer it still holds, so such a connection
/// is ended with [`linger`].
pub fn sent_more<C: Readable>(client: &mut C, inbuf: &[u8]) -> bool {
    !inbuf.is_empty() || client.holds_input()
}

/// How long a connection closed with its request body unread keeps reading (and dropping) it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends a connection whose client may still be sending what the proxy will not read (a body
/// after a 413, or after an upstream answered early): the write side is shut, then the rest is
/// read and dropped until the client closes, for at most [`LINGER`]. Closed with unread bytes,
/// the kernel would send a reset, which can destroy the answer before the client reads it
/// (nginx's lingering close).
pub async fn linger<S: AsyncReadRent + AsyncWriteRent>(stream: &mut S) {
    // The shutdown within the time too: a TLS close_notify to a client that does not read
    // could otherwise wait for the send timeout.
    let drain = async {
        let _ = stream.shutdown().await;
        // Small: many connections may linger at once, each for 5 s.
        let mut scratch = Vec::with_capacity(4 * 1024);
        loop {
            let (result, buf) = stream.read(scratch).await;
            scratch = buf;
            scratch.clear();
            if !matches!(result, Ok(n) if n > 0) {
                return;
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}

/// Makes room for `n` more bytes at the end of `buf`. An empty buffer too small is replaced,
/// not grown: growing copies its whole old capacity, dead bytes and all.
pub fn make_room(buf: &mut Vec<u8>, n: usize) {
    if buf.capacity() - buf.len() >= n {
        return;
    }
    if buf.is_empty() {
        *buf = Vec::with_capacity(n);
    } else {
        buf.reserve(n);
    }
}

/// Reads more bytes onto the end of `buf`. Ok(0) is end of stream.
pub async fn read_more<S: AsyncReadRent>(stream: &mut S, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        let more = BUFFER.max(buf.len() / 2);
        make_room(&mut buf, more);
    }
    read_into_spare(stream, buf).await
}

/// Reads into the room `buf` has after its bytes (which the caller made), never growing it.
pub async fn read_into_spare<S: AsyncReadRent>(stream: &mut S, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let (len, cap) = (buf.len(), buf.capacity());
    let (result, slice) = stream.read(buf.slice_mut(len..cap)).await;
    (result, slice.into_inner())
}

/// Writes all of `buf`, then gives it back (cleared) for reuse.
pub async fn write_all<S: AsyncWriteRent>(stream: &mut S, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let (result, mut buf) = stream.write_all(buf).await;
    buf.clear();
    (result.map(|_| ()), buf)
}

/// Writes `buf[from..]`, giving the buffer back whole.
pub async fn write_from<S: AsyncWriteRent>(stream: &mut S, buf: Vec<u8>, from: usize) -> (io::Result<()>, Vec<u8>) {
    if from >= buf.len() {
        return (Ok(()), buf);
    }
    let end = buf.len();
    let (result, slice) = stream.write_all(buf.slice(from..end)).await;
    (result.map(|_| ()), slice.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::probes_within;

    #[test]
    fn keepalive_probes_fit_inside_the_user_timeout() {
        // The default send_timeout_seconds: probes from 30 s, 5 s apart; the sixth at 55 s.
        assert_eq!(probes_within(Duration::from_secs(60)), (30, 5));
        for secs in [12, 30, 60, 90, 120, 3_600] {
            let (idle, interval) = probes_within(Duration::from_secs(secs));
            assert!(idle + 5 * interval < secs, "{secs} s: six probes at {idle} s + n × {interval} s");
            assert!(idle <= 60 && (1..=10).contains(&interval), "{secs} s: no later than the defaults");
        }
        // Below what six probes can fit: a probe a second, from the first second.
        assert_eq!(probes_within(Duration::from_secs(1)), (1, 1));
        assert_eq!(probes_within(Duration::from_millis(500)), (1, 1));
    }
}
