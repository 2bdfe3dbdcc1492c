//! One proxy's connection to the snapshot socket, admin's half of the conversation in
//! [`bcs_shared::snapshot::wire`]: read the proxy's `Hello` (within [`HELLO_TIMEOUT`]);
//! answer `Refused` if the major versions differ, else `Hello`, the current snapshot, and each
//! newer one as it is published; read the proxy's `Ack`s.
//!
//! Each connection is its own task, so a stuck proxy delays nobody else; it is dropped when a
//! write takes longer than [`WRITE_TIMEOUT`]. A proxy that falls behind is sent the newest
//! snapshot next, never a queue. Frames are never logged: snapshots hold cluster tokens.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bcs_shared::snapshot::wire::{self, Decoder, Message, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::publisher::Publisher;
use super::server::Peers;

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame may take to be written before the proxy counts as stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame a proxy may send: it only sends `Hello` and `Ack`.
pub const MAX_PEER_FRAME: usize = 64 * 1024;
/// Longest proxy name kept for the logs.
const MAX_NAME: usize = 128;

pub async fn serve(stream: UnixStream, publisher: Arc<Publisher>, peers: Arc<Peers>) {
    let credentials = stream.peer_cred().ok();
    let pid = credentials.and_then(|c| c.pid());
    let uid = credentials.map(|c| c.uid());
    if !uid.is_some_and(|uid| wire::peer_trusted(uid, wire::own_uid())) {
        tracing::warn!(pid, uid, "refusing a snapshot socket connection from another user");
        return;
    }
    if let Err(e) = converse(stream, pid, &publisher, &peers).await {
        tracing::warn!(pid, error = %format!("{e:#}"), "snapshot connection closed");
    }
}

async fn converse(
    stream: UnixStream,
    pid: Option<i32>,
    publisher: &Publisher,
    peers: &Arc<Peers>,
) -> anyhow::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let mut decoder = Decoder::with_limit(MAX_PEER_FRAME);
    let mut buffer = vec![0u8; 8 * 1024];

    let hello = tokio::time::timeout(HELLO_TIMEOUT, next_message(&mut reader, &mut decoder, &mut buffer))
        .await
        .map_err(|_| anyhow!("no hello within {HELLO_TIMEOUT:?}"))?
        .context("reading the hello")?;
    let (major, minor, name, held) = match hello {
        Some(Message::Hello { major, minor, peer, revision }) => (major, minor, printable(&peer), revision),
        Some(other) => bail!("expected a hello, got {}", kind(&other)),
        None => return Ok(()), // connected and left: a probe
    };
    if major != PROTOCOL_MAJOR {
        let reason = format!(
            "snapshot protocol {major}.{minor} is not supported: bcs-api speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} \
             (major versions must match)"
        );
        tracing::warn!(pid, peer = %name, major, minor, "refused a proxy speaking another major protocol version");
        send(&mut writer, &wire::encode(&Message::Refused { reason })).await?;
        let _ = writer.shutdown().await;
        return Ok(());
    }

    let entry = peers.join();
    let current = publisher.current();
    let reply = Message::Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        peer: format!("bcs-api pid {}", std::process::id()),
        revision: current.as_ref().map(|c| c.revision()),
    };
    send(&mut writer, &wire::encode(&reply)).await?;
    tracing::info!(pid, peer = %name, connection = entry.id(), minor, holds = held, "proxy connected for snapshots");
    if let Some(held) = held {
        publisher.peer_holds(held);
    }

    let mut updates = publisher.subscribe();
    updates.mark_changed();
    // The first snapshot may be the one the proxy holds (the conversation always opens with
    // one), never an older one; after that, only newer ones. A revision held that is far ahead
    // of the clock holds nothing back: the proxy takes ours over it (control.rs).
    let mut at_least = held.filter(|&r| bcs_shared::snapshot::revision_trusted(r)).unwrap_or(0);
    let mut acked = None;
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return Ok(()); // the publisher is gone: shutting down
                }
                let newest = updates.borrow_and_update().clone();
                let Some(newest) = newest else { continue };
                if newest.revision() < at_least {
                    continue;
                }
                let revision = newest.revision();
                send(&mut writer, &newest.frame).await.with_context(|| format!("sending revision {revision}"))?;
                at_least = revision.saturating_add(1);
                tracing::debug!(peer = %name, connection = entry.id(), revision, "sent a snapshot");
            }
            message = next_message(&mut reader, &mut decoder, &mut buffer) => match message? {
                Some(Message::Ack { revision }) => {
                    tracing::debug!(peer = %name, connection = entry.id(), revision, "proxy acknowledged a snapshot");
                    entry.acked(revision);
                    acked = Some(revision);
                }
                Some(other) => bail!("unexpected {} from proxy {name}", kind(&other)),
                None => {
                    tracing::info!(pid, peer = %name, connection = entry.id(), last_acked = acked,
                        "proxy disconnected");
                    return Ok(());
                }
            },
        }
    }
}

/// The next whole message; `None` when the peer closed between messages. Cancel-safe: bytes
/// read are in `decoder` before the only await point is left.
async fn next_message(
    reader: &mut (impl AsyncRead + Unpin),
    decoder: &mut Decoder,
    buffer: &mut [u8],
) -> anyhow::Result<Option<Message>> {
    let mut partial = false;
    loop {
        if let Some(message) = decoder.next_message()? {
            return Ok(Some(message));
        }
        let n = reader.read(buffer).await?;
        if n == 0 {
            return if partial { Err(anyhow!("closed in the middle of a frame")) } else { Ok(None) };
        }
        partial = true;
        decoder.push(&buffer[..n])?;
    }
}

async fn send(writer: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> anyhow::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(frame))
        .await
        .map_err(|_| anyhow!("the proxy did not read a frame within {WRITE_TIMEOUT:?}"))??;
    Ok(())
}

/// The message's type, for logs (never its content).
fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "hello",
        Message::Refused { .. } => "refused",
        Message::Snapshot(_) => "snapshot",
        Message::Ack { .. } => "ack",
    }
}

/// A proxy-chosen name made safe for a log line: printable ASCII, bounded.
fn printable(name: &str) -> String {
    name.chars().take(MAX_NAME).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_are_read_across_reads_and_oversize_frames_refused() {
        let hello = wire::encode(&Message::Hello { major: 1, minor: 0, peer: "p".into(), revision: None });
        let ack = wire::encode(&Message::Ack { revision: 5 });
        let bytes = [hello.clone(), ack].concat();
        let mut reader: &[u8] = &bytes;
        let mut decoder = Decoder::with_limit(MAX_PEER_FRAME);
        let mut buffer = [0u8; 3]; // frames arrive in pieces
        assert!(matches!(
            next_message(&mut reader, &mut decoder, &mut buffer).await.unwrap(),
            Some(Message::Hello { .. })
        ));
        assert_eq!(
            next_message(&mut reader, &mut decoder, &mut buffer).await.unwrap(),
            Some(Message::Ack { revision: 5 })
        );
        assert_eq!(next_message(&mut reader, &mut decoder, &mut buffer).await.unwrap(), None);

        let mut reader: &[u8] = &hello[..hello.len() - 1];
        let mut decoder = Decoder::with_limit(MAX_PEER_FRAME);
        assert!(next_message(&mut reader, &mut decoder, &mut buffer).await.is_err(), "a cut frame");

        let oversize = u32::MAX.to_be_bytes();
        let mut reader: &[u8] = &oversize;
        let mut decoder = Decoder::with_limit(MAX_PEER_FRAME);
        let error = next_message(&mut reader, &mut decoder, &mut buffer).await.unwrap_err();
        assert!(error.to_string().contains("larger than the limit"), "{error}");
    }

    #[test]
    fn names_are_printable_and_bounded() {
        assert_eq!(printable("bcs-api-proxy pid 12"), "bcs-api-proxy pid 12");
        assert_eq!(printable("a\nb\u{1b}[31m"), "a?b?[31m");
        assert_eq!(printable(&"x".repeat(1000)).len(), MAX_NAME);
    }
}
