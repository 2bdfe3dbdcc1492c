//! The Kubernetes channel protocol over WebSocket (exec and attach: `v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, ...), and the port-forward tunnel (`SPDY/3.1+portforward.k8s.io`:
//! SPDY frames carried in binary messages).
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::exec::{exit_status, run, Out, Pod};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5 only: "the stream whose id follows is closed" (the client's stdin EOF).
pub const CLOSE: u8 = 255;

/// Channel subprotocols the fake speaks, best first.
pub const CHANNEL_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The first of `supported` that the client offered in `Sec-WebSocket-Protocol` values.
pub fn select_protocol<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    let offered: Vec<&str> = offered.iter().flat_map(|v| v.split(',')).map(str::trim).collect();
    supported.iter().copied().find(|s| offered.contains(s))
}

/// A channel message: the channel byte, then the payload.
pub fn encode(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + data.len());
    m.push(channel);
    m.extend_from_slice(data);
    m
}

/// Splits a channel message into channel and payload.
pub fn decode(message: &[u8]) -> Option<(u8, &[u8])> {
    message.split_first().map(|(c, rest)| (*c, rest))
}

pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

pub async fn accept(upgraded: Upgraded) -> Ws {
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await
}

/// Runs `argv` with the channel protocol; ends with the Status on channel 3 and a close.
pub async fn serve_exec(ws: Ws, argv: Vec<String>, want_stdin: bool, pod: Pod) {
    let (mut sink, mut stream) = ws.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) => match decode(&b) {
                    Some((STDIN, data)) => {
                        if let Some(tx) = &stdin_tx {
                            if !data.is_empty() && tx.send(data.to_vec()).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    Some((CLOSE, [STDIN, ..])) => stdin_tx = None,
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::channel(64);
    let cmd_argv = argv.clone();
    let command = tokio::spawn(async move { run(&cmd_argv, want_stdin.then_some(stdin_rx), out_tx, &pod).await });
    let mut client_gone = false;
    while let Some(o) = out_rx.recv().await {
        let m = match o {
            Out::Stdout(b) => encode(STDOUT, &b),
            Out::Stderr(b) => encode(STDERR, &b),
        };
        if sink.send(Message::Binary(m.into())).await.is_err() {
            client_gone = true;
            break;
        }
    }
    if client_gone {
        command.abort();
        reader.abort();
        return;
    }
    let code = command.await.unwrap_or(1);
    let status = serde_json::to_vec(&exit_status(&argv, code)).unwrap_or_default();
    let _ = sink.send(Message::Binary(encode(ERROR, &status).into())).await;
    let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let _ = sink.send(Message::Close(Some(close))).await;
    // Wait for the client's close (bounded), then drop the connection.
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
}

/// Carries a byte stream in binary messages: the SPDY session runs on the other end of the
/// returned duplex pipe.
pub fn tunnel(ws: Ws) -> tokio::io::DuplexStream {
    let (inner, outer) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(outer);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                    Ok(n) => {
                        if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
    });
    inner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_carry_the_stream_in_the_first_byte() {
        assert_eq!(encode(STDOUT, b"hi\n"), b"\x01hi\n");
        assert_eq!(decode(b"\x00abc"), Some((STDIN, &b"abc"[..])));
        assert_eq!(decode(&[CLOSE, STDIN]), Some((CLOSE, &[STDIN][..])));
        assert_eq!(decode(b""), None);
        assert_eq!(RESIZE, 4);
    }

    #[test]
    fn v5_is_preferred_and_unknown_protocols_are_refused() {
        let offered = vec!["v4.channel.k8s.io, v5.channel.k8s.io".to_string(), "channel.k8s.io".to_string()];
        assert_eq!(select_protocol(&offered, CHANNEL_PROTOCOLS), Some("v5.channel.k8s.io"));
        let old = vec!["v4.channel.k8s.io,v3.channel.k8s.io".to_string()];
        assert_eq!(select_protocol(&old, CHANNEL_PROTOCOLS), Some("v4.channel.k8s.io"));
        assert_eq!(select_protocol(&["base64.channel.k8s.io".to_string()], CHANNEL_PROTOCOLS), None);
    }
}
