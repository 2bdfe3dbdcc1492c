//! A SPDY/3.1 server session over any byte stream: accepts the client's streams (answering each
//! SYN_STREAM with a SYN_REPLY, as kubelet does), routes DATA to them, answers PING, stops on
//! GOAWAY or EOF. No flow control is enforced (Kubernetes clients send small windows' worth).
use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{Decoder, Encoder, Frame, Headers, FLAG_FIN};

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamWriter {
    pub id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    pub async fn write(&self, data: Vec<u8>) -> bool {
        for chunk in data.chunks(32 * 1024) {
            let f = Frame::Data { stream_id: self.id, flags: 0, data: chunk.to_vec() };
            if self.frames.send(f).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn close(&self) {
        let _ = self.frames.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Vec::new() }).await;
    }
}

/// A stream the client opened.
pub struct Stream {
    pub headers: Headers,
    /// Data from the client; closes on FIN, RST_STREAM or the end of the connection.
    pub data: mpsc::Receiver<Vec<u8>>,
    pub writer: StreamWriter,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        Frame::header(&self.headers, name)
    }
}

/// Starts the session's reader and writer tasks; new streams arrive on the returned channel,
/// which closes when the connection ends.
pub fn start<IO>(io: IO) -> mpsc::Receiver<Stream>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(256);
    let (streams_tx, streams_rx) = mpsc::channel::<Stream>(64);
    tokio::spawn(async move {
        let mut enc = Encoder::default();
        while let Some(f) = frames_rx.recv().await {
            let goaway = matches!(f, Frame::GoAway { .. });
            if wr.write_all(&enc.encode(&f)).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            if goaway {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut dec = Decoder::default();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut open: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
        'read: loop {
            loop {
                let frame = match dec.decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => {
                        let _ = frames_tx.send(Frame::GoAway { last_stream_id: 0, status: 1 }).await;
                        break 'read;
                    }
                };
                match frame {
                    Frame::SynStream { stream_id, flags, headers, .. } => {
                        let (tx, rx) = mpsc::channel(64);
                        if flags & FLAG_FIN == 0 {
                            open.insert(stream_id, tx);
                        }
                        let reply = Frame::SynReply { stream_id, flags: 0, headers: Vec::new() };
                        if frames_tx.send(reply).await.is_err() {
                            break 'read;
                        }
                        let writer = StreamWriter { id: stream_id, frames: frames_tx.clone() };
                        let _ = streams_tx.send(Stream { headers, data: rx, writer }).await;
                    }
                    Frame::Data { stream_id, flags, data } => {
                        if let Some(tx) = open.get(&stream_id) {
                            if !data.is_empty() {
                                let _ = tx.send(data).await;
                            }
                        }
                        if flags & FLAG_FIN != 0 {
                            open.remove(&stream_id);
                        }
                    }
                    Frame::RstStream { stream_id, .. } => {
                        open.remove(&stream_id);
                    }
                    Frame::Ping { id } => {
                        let _ = frames_tx.send(Frame::Ping { id }).await;
                    }
                    Frame::GoAway { .. } => break 'read,
                    _ => {}
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    streams_rx
}
