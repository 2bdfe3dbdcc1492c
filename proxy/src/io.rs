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
}

/// monoio's `time::timeout` with its timer on the heap. monoio's `Sleep` is 640 bytes aligned to
/// 128: inline, it pads every future that holds it and every future above that, up to the
/// connection's task, which an idle watch keeps for hours. The boxed timers are kept for reuse
/// on their core ([`Timer`]): a request sets two, and a fresh one cost two allocations (the box
/// and nothing else, but at every use). Err: `limit` passed first.
pub async fn timeout<F: std::future::Future>(limit: std::time::Duration, work: F) -> Result<F::Output, ()> {
    let mut timer = Timer::set(limit);
    let mut work = std::pin::pin!(work);
    monoio::select! {
        out = &mut work => Ok(out),
        _ = timer.sleep() => Err(()),
    }
}

/// Boxed timers of this core not in use, each set far ahead so it wakes nobody meanwhile.
/// Bounded: a burst of connections leaves at most this many behind.
const SPARE_TIMERS: usize = 256;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<std::pin::Pin<Box<monoio::time::Sleep>>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A boxed `Sleep` taken from this core's spares (or made) and given back when dropped.
struct Timer(Option<std::pin::Pin<Box<monoio::time::Sleep>>>);

impl Timer {
    fn set(limit: std::time::Duration) -> Timer {
        let deadline = monoio::time::Instant::now() + limit;
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        Timer(Some(match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(monoio::time::sleep_until(deadline)),
        }))
    }

    fn sleep(&mut self) -> std::pin::Pin<&mut monoio::time::Sleep> {
        self.0.as_mut().expect("a timer until dropped").as_mut()
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(mut sleep) = self.0.take() else { return };
        // A later deadline only marks the entry (monoio moves it when its old slot comes due);
        // a day ahead, it never fires while it waits here.
        let far = sleep.deadline() + std::time::Duration::from_secs(86_400);
        sleep.as_mut().reset(far);
        // try_with: a thread that is ending drops its timers instead.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_TIMERS {
                s.push(sleep);
            }
        });
    }
}

/// Reads more bytes onto the end of `buf`. Ok(0) is end of stream.
pub async fn read_more<S: AsyncReadRent>(stream: &mut S, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(BUFFER.max(buf.len() / 2));
    }
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

    fn on_a_runtime(work: impl std::future::Future<Output = ()>) {
        let mut runtime =
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime");
        runtime.block_on(work);
    }

    /// A timer given back and taken again keeps no trace of its last deadline: a short one that
    /// was never reached does not cut a later, longer wait, and a reused timer still fires.
    #[test]
    fn reused_timers_fire_at_their_new_deadline_only() {
        on_a_runtime(async {
            for _ in 0..3 {
                assert_eq!(super::timeout(Duration::from_millis(5), async { 7 }).await, Ok(7));
            }
            assert_eq!(super::SPARE.with(|s| s.borrow().len()), 1, "one timer, reused");
            // Past the 5 ms deadlines the spare was set to before: it must not fire then.
            let slow = super::timeout(Duration::from_secs(5), async {
                monoio::time::sleep(Duration::from_millis(50)).await;
                "done"
            });
            assert_eq!(slow.await, Ok("done"));
            let never = super::timeout(Duration::from_millis(20), std::future::pending::<()>());
            let bounded = monoio::time::timeout(Duration::from_secs(10), never).await;
            assert_eq!(bounded, Ok(Err(())), "a reused timer fires");
            assert_eq!(super::SPARE.with(|s| s.borrow().len()), 1);
        });
    }

    #[test]
    fn spare_timers_are_bounded() {
        on_a_runtime(async {
            let held: Vec<_> =
                (0..super::SPARE_TIMERS + 10).map(|_| super::Timer::set(Duration::from_secs(60))).collect();
            drop(held);
            assert_eq!(super::SPARE.with(|s| s.borrow().len()), super::SPARE_TIMERS);
        });
    }
}
