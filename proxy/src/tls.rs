//! TLS on monoio's owned-buffer I/O, for both legs: clients' connections (server side) and
//! apiservers' (client side). rustls does the protocol; this file only moves ciphertext.
//!
//! Written here, not taken from monoio-rustls, because the proxy's memory and system-call budget
//! lives in this layer (DESIGN §5, benches/README.md):
//! - a read takes as much ciphertext as the caller's buffer can take the plaintext of, up to
//!   [`CIPHER_READ`] per system call (monoio-rustls: 16 KiB);
//! - the ciphertext buffer exists only while a read is in flight or ciphertext is left over, so
//!   a connection at rest holds none (monoio-rustls keeps two zeroed 16 KiB buffers per connection
//!   for its whole life: 32 KiB of every idle watch);
//! - a write encrypts the whole buffer and sends it in one call (monoio-rustls: 16 KiB per call);
//! - [`TlsStream::readable`] waits for data without any buffer, for streams that idle.
//!
//! Reads and writes touch disjoint state across their awaits (the read side owns `pending`; the
//! write side only a local buffer; rustls is used between awaits, never across one), which is
//! what monoio's `Split` asks for: exec and port-forward tunnels read and write at once.
use std::io::{self, BufRead, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};

/// The most ciphertext one read asks the kernel for.
pub const CIPHER_READ: usize = 256 * 1024;

/// What a read asks for beyond the plaintext it wants: record headers and tags (22 bytes per
/// 16 KiB record), with room to spare.
const CIPHER_SLACK: usize = 512;

/// A handshake read: the largest record.
const HANDSHAKE_READ: usize = 16 * 1024 + CIPHER_SLACK;

/// A TLS connection over TCP; `C` is rustls' `ClientConnection` or `ServerConnection`.
pub struct TlsStream<C> {
    io: TcpStream,
    /// Boxed: a stream is passed by value down a request's chain of futures, and each level
    /// that holds it would otherwise hold rustls' kilobyte of state again.
    session: Box<C>,
    /// Ciphertext read from the socket and not yet taken by rustls (from `pos` on). Empty, and
    /// without capacity, whenever everything read has been taken.
    pending: Vec<u8>,
    pos: usize,
    /// The last read returned because rustls had no more plaintext and no ciphertext was
    /// pending: nothing is held, so [`TlsStream::drained`] need not ask rustls.
    emptied: bool,
}

pub type ServerTls = TlsStream<ServerConnection>;
pub type ClientTls = TlsStream<ClientConnection>;

// SAFETY: reads and writes are independent (see the module comment): across an await the read
// side holds only the socket and `pending`, the write side only the socket and its own buffer.
unsafe impl<C> Split for TlsStream<C> {}

impl<C> AsRawFd for TlsStream<C> {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

/// Accepts a client's TLS connection (the handshake, then the stream).
pub async fn accept(io: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<ServerTls> {
    let session = ServerConnection::new(config).map_err(io::Error::other)?;
    TlsStream::handshaken(io, session).await
}

/// Opens a TLS connection to a server that must prove it is `name`.
pub async fn connect(
    io: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<ClientTls> {
    let session = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let stream = TlsStream::handshaken(io, session).await?;
    let resumed = stream.session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    crate::metrics::upstream_handshake(resumed);
    Ok(stream)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<C, D> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
{
    async fn handshaken(io: TcpStream, session: C) -> io::Result<Self> {
        let mut session = Box::new(session);
        // Whole writes are encrypted at once (see `write`): no cap on what rustls may queue.
        session.set_buffer_limit(None);
        let mut stream = TlsStream { io, session, pending: Vec::new(), pos: 0, emptied: false };
        while stream.session.is_handshaking() {
            if stream.session.wants_write() {
                stream.send_queued().await?;
            } else if stream.session.wants_read() {
                if stream.pos == stream.pending.len() && stream.read_cipher(HANDSHAKE_READ).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    ));
                }
                if let Err(e) = stream.take_cipher() {
                    // Tell the peer why (rustls queued an alert), then give up.
                    let _ = stream.send_queued().await;
                    return Err(e);
                }
            } else {
                return Err(io::Error::other("the TLS handshake stalled: nothing to send and nothing awaited"));
            }
        }
        if stream.session.wants_write() {
            stream.send_queued().await?;
        }
        Ok(stream)
    }

    /// Ciphertext read from the socket and not yet given to rustls.
    pub fn unfed(&self) -> usize {
        self.pending.len() - self.pos
    }

    /// Reads up to `want` bytes of ciphertext from the socket into `pending`. Ok(0): the peer
    /// closed the socket.
    async fn read_cipher(&mut self, want: usize) -> io::Result<usize> {
        let (result, buf) = self.io.read(Vec::with_capacity(want)).await;
        result?;
        self.keep(buf)
    }

    /// Takes up to `want` bytes the socket holds now into `pending`, without waiting. None:
    /// nothing yet. Synchronous on purpose: a future dropped at an await loses nothing, where an
    /// io_uring read dropped after it completed would lose its bytes (`readable` is raced against
    /// other events and dropped).
    fn recv_now(&mut self, want: usize) -> io::Result<Option<usize>> {
        let mut buf: Vec<u8> = Vec::with_capacity(want);
        // SAFETY: recv writes at most `want` bytes into the vector's spare room, then the length
        // is set to what it wrote.
        let n = unsafe { libc::recv(self.io.as_raw_fd(), buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        unsafe { buf.set_len(n as usize) };
        self.keep(buf).map(Some)
    }

    /// Makes what a socket read returned the pending ciphertext; an empty read is the socket's
    /// end. The number of bytes read.
    fn keep(&mut self, read: Vec<u8>) -> io::Result<usize> {
        let n = read.len();
        if n == 0 {
            self.socket_ended()?;
        } else {
            self.pending = read;
            self.pos = 0;
        }
        Ok(n)
    }

    /// Tells rustls the socket ended: its reader then answers with UnexpectedEof unless
    /// close_notify came first.
    fn socket_ended(&mut self) -> io::Result<()> {
        self.session.read_tls(&mut io::empty())?;
        self.session.process_new_packets().map_err(tls_error)?;
        Ok(())
    }

    /// Gives rustls pending ciphertext, one bite at a time, until it is all taken or rustls holds
    /// a full plaintext buffer; decrypts what it took.
    fn take_cipher(&mut self) -> io::Result<()> {
        while self.pos < self.pending.len() {
            let taken = match self.session.read_tls(&mut &self.pending[self.pos..]) {
                Ok(n) => n,
                // Its plaintext buffer is full: the reader must drain it first.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e),
            };
            if taken == 0 {
                // close_notify was received: what follows it is not the peer's data.
                self.pos = self.pending.len();
                break;
            }
            self.pos += taken;
            self.session.process_new_packets().map_err(tls_error)?;
        }
        if self.pos == self.pending.len() {
            self.pending = Vec::new();
            self.pos = 0;
        }
        Ok(())
    }

    /// Sends everything rustls has queued (handshake messages, alerts, records) in one write.
    async fn send_queued(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        while self.session.wants_write() {
            self.session.write_tls(&mut out)?;
        }
        if out.is_empty() {
            return Ok(());
        }
        let (result, _) = self.io.write_all(out).await;
        result.map(|_| ())
    }

    /// Decrypted bytes into `dst`, reading the socket only when nothing is decrypted or
    /// pending. Ok(0): the peer ended the stream with close_notify.
    async fn read_plain(&mut self, mut dst: Spare) -> io::Result<usize> {
        if dst.len == 0 {
            return Ok(0);
        }
        self.emptied = false;
        let mut filled = 0;
        loop {
            let mut reader = self.session.reader();
            match reader.fill_buf() {
                // The end: close_notify came, and everything before it was handed out.
                Ok([]) => return Ok(filled),
                Ok(chunk) => {
                    let n = dst.put(filled, chunk);
                    reader.consume(n);
                    filled += n;
                    if filled == dst.len {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The data before an unclean end is delivered first; the error comes next read.
                Err(_) if filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
            if self.pos < self.pending.len() {
                match self.take_cipher() {
                    Ok(()) => continue,
                    // What was decrypted before the error is delivered first.
                    Err(_) if filled > 0 => return Ok(filled),
                    Err(e) => return Err(e),
                }
            }
            if filled > 0 {
                // rustls said WouldBlock and nothing is pending: all that came is handed out.
                self.emptied = true;
                return Ok(filled);
            }
            // A session that failed earlier (rustls keeps the error) fails this read too,
            // rather than waiting on the socket for bytes it could not use.
            self.session.process_new_packets().map_err(tls_error)?;
            // As much ciphertext as `dst` can take the plaintext of: an idle keep-alive connection
            // waits on a buffer the size of its request buffer, not on 64 KiB.
            self.read_cipher(dst.len.min(CIPHER_READ) + CIPHER_SLACK).await?;
            self.take_cipher()?;
        }
    }

    /// Waits, holding no buffer while nothing arrives, until a read would not wait: plaintext,
    /// or the end of the stream. Records that carry no data (TLS 1.3 session tickets, key
    /// updates) are taken on the way and do not count. Err: the session failed (as the read
    /// would). Safe to drop at any point: it never holds bytes it has not handed to rustls.
    pub async fn readable(&mut self) -> io::Result<()> {
        self.emptied = false;
        loop {
            self.take_cipher()?;
            let state = self.session.process_new_packets().map_err(tls_error)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() || self.pos < self.pending.len() {
                return Ok(());
            }
            self.io.readable(false).await?;
            if self.recv_now(HANDSHAKE_READ)? == Some(0) {
                return Ok(());
            }
        }
    }

    /// Once [`readable`](Self::readable) has returned: plaintext to read (or ciphertext still to
    /// give rustls, which only waits while plaintext fills its buffer) is bytes; no plaintext is
    /// the peer's end (close_notify, the socket's end, a failed session), since `readable`
    /// returns for nothing else.
    pub fn came(&mut self) -> crate::io::Came {
        use crate::io::Came;
        if self.pos < self.pending.len() {
            return Came::Bytes;
        }
        match self.session.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() > 0 => Came::Bytes,
            _ => Came::End,
        }
    }

    /// True while nothing has come in that a reader has not taken: no ciphertext read and
    /// waiting, no plaintext, no close_notify. (A pooled connection between exchanges; the
    /// socket itself is peeked by `io::quiet`.)
    pub fn drained(&mut self) -> bool {
        if self.emptied {
            return true;
        }
        if self.pos < self.pending.len() {
            return false;
        }
        match self.session.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed(),
            Err(_) => false,
        }
    }

    /// Encrypts `src` whole and sends it in one write.
    async fn write_plain(&mut self, src: &[u8]) -> io::Result<()> {
        // Records add 22 bytes each (header, tag, content type) to at most 16 KiB of data.
        let mut out = Vec::with_capacity(src.len() + (src.len() / 16384 + 1) * 32);
        while self.session.wants_write() {
            self.session.write_tls(&mut out)?;
        }
        let mut written = 0;
        while written < src.len() {
            let n = self.session.writer().write(&src[written..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "the TLS session takes no more data"));
            }
            written += n;
            while self.session.wants_write() {
                self.session.write_tls(&mut out)?;
            }
        }
        let (result, _) = self.io.write_all(out).await;
        result.map(|_| ())
    }
}

/// Where a read's plaintext goes: a buffer's writable room, which may be uninitialised, so it
/// is only ever written through its pointer, never seen as a `&mut [u8]` (a reference to
/// uninitialised bytes is undefined behaviour even if only written).
struct Spare {
    ptr: *mut u8,
    len: usize,
}

impl Spare {
    /// Copies as much of `bytes` as fits at offset `at`; returns how much.
    fn put(&mut self, at: usize, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.len.saturating_sub(at));
        // SAFETY: `ptr..ptr + len` is the room a monoio buffer gives for writing (`write_ptr`,
        // `bytes_total`), held by the read that made this `Spare`; `at + n <= len`; `bytes` is
        // rustls' own plaintext, another allocation.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), n) };
        n
    }
}

impl<C, D> AsyncReadRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // The buffer's room from its write pointer: what `set_init` then marks as written.
        let dst = Spare { ptr: buf.write_ptr(), len: buf.bytes_total() };
        let result = self.read_plain(dst).await;
        if let Ok(n) = result {
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Fills the first non-empty slice only, as a single read may.
        let iovecs = unsafe { std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len()) };
        let Some(first) = iovecs.iter().find(|v| v.iov_len > 0) else { return (Ok(0), buf) };
        let dst = Spare { ptr: first.iov_base as *mut u8, len: first.iov_len };
        let result = self.read_plain(dst).await;
        if let Ok(n) = result {
            unsafe { buf.set_init(n) };
        }
        (result, buf)
    }
}

impl<C, D> AsyncWriteRent for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, borrowed while it is held here.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let result = self.write_plain(src).await.map(|_| src.len());
        (result, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let mut joined = Vec::with_capacity(iovecs.iter().map(|v| v.iov_len).sum());
        for v in iovecs {
            joined.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) });
        }
        let result = self.write_plain(&joined).await.map(|_| joined.len());
        (result, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_queued().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        self.send_queued().await?;
        self.io.shutdown().await
    }
}
