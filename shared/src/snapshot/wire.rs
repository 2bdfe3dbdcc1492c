//! The snapshot protocol on the unix socket: frames of a big-endian u32 length and a JSON
//! payload. Sans-io: [`encode`] makes bytes, [`Decoder`] takes bytes as they arrive.
//!
//! Conversation: the proxy sends `Hello{major, minor, peer, revision}`; admin answers `Hello`
//! (or `Refused` when the majors differ) and then a full `Snapshot`; after that admin sends a
//! full `Snapshot` whenever the revision changes, and the proxy answers each with `Ack`.
//! Every message is a whole snapshot, so a missed one cannot leave a gap (no deltas yet).
//!
//! Why by hand: the protocol is a few dozen lines, and owning it keeps the size check before
//! any allocation and the error messages ours.
//!
//! A message is a JSON object whose first field is `"type"` (what serde's internally tagged
//! form writes). Decoding insists on that order: it reads the type, then hands the rest of the
//! object straight to the variant's fields. serde's own decoding of an internally tagged enum
//! would first copy the whole object into a generic tree, a million token objects of it for a
//! large snapshot, which cost more than the decode itself. Unknown fields are ignored, so a
//! minor version can add some; a second `"type"` is one of them (serde's derive refused it).
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::Snapshot;

pub const PROTOCOL_MAJOR: u16 = 1;
/// 1: snapshots may carry `mesos_pending` (a proxy of minor 0 ignores it and empties its drivers).
pub const PROTOCOL_MINOR: u16 = 1;
/// Largest frame either side accepts: enough for thousands of clusters and a million tokens.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        major: u16,
        minor: u16,
        /// Who is speaking, for logs (`bcs-api-proxy pid 1234`).
        peer: String,
        /// The revision the speaker holds, if any.
        revision: Option<u64>,
    },
    Refused {
        reason: String,
    },
    Snapshot(Snapshot),
    Ack {
        revision: u64,
    },
}

/// The fields of each variant but `Snapshot`, decoded after the type.
#[derive(Deserialize)]
struct HelloFields {
    major: u16,
    minor: u16,
    peer: String,
    revision: Option<u64>,
}

#[derive(Deserialize)]
struct RefusedFields {
    reason: String,
}

#[derive(Deserialize)]
struct AckFields {
    revision: u64,
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Message, D::Error> {
        d.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object whose first field is \"type\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        if map.next_key::<String>()?.as_deref() != Some("type") {
            return Err(de::Error::custom("a message's first field must be \"type\""));
        }
        let kind: String = map.next_value()?;
        let rest = MapAccessDeserializer::new(map);
        Ok(match kind.as_str() {
            "hello" => {
                let HelloFields { major, minor, peer, revision } = HelloFields::deserialize(rest)?;
                Message::Hello { major, minor, peer, revision }
            }
            "refused" => Message::Refused { reason: RefusedFields::deserialize(rest)?.reason },
            "snapshot" => Message::Snapshot(Snapshot::deserialize(rest)?),
            "ack" => Message::Ack { revision: AckFields::deserialize(rest)?.revision },
            other => return Err(de::Error::unknown_variant(other, &["hello", "refused", "snapshot", "ack"])),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Whether a process of `peer_uid` may be the other end of the snapshot socket for one of
/// `own_uid`: the same user (admin and its proxies run as one), or root. Another user's process
/// must neither receive cluster credentials nor plant a socket that feeds a proxy forged tables.
pub fn peer_trusted(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// This process's effective user, for [`peer_trusted`].
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// One frame holding `message`.
pub fn encode(message: &Message) -> Vec<u8> {
    let payload = serde_json::to_vec(message).expect("messages always serialize");
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// What a decoder keeps of its buffer after handing out a message.
const KEPT_ROOM: usize = 64 * 1024;

/// Accumulates bytes and yields whole messages.
pub struct Decoder {
    buffer: Vec<u8>,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::with_limit(MAX_FRAME)
    }
}

impl Decoder {
    pub fn with_limit(max: usize) -> Self {
        Decoder { buffer: Vec::new(), max }
    }

    /// Adds received bytes. Refuses at once a frame whose announced length is over the limit,
    /// before buffering its payload.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.buffer.extend_from_slice(bytes);
        if let Some(len) = self.check_length()? {
            // Room for the whole frame at once (its length passed the limit): a large snapshot
            // arriving in many reads is then copied once, not at every doubling of the buffer.
            self.buffer.reserve((4 + len).saturating_sub(self.buffer.len()));
        }
        Ok(())
    }

    fn check_length(&self) -> Result<Option<usize>, WireError> {
        let Some(header) = self.buffer.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(WireError::Oversize { len, max: self.max });
        }
        Ok(Some(len))
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(len) = self.check_length()? else { return Ok(None) };
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        // The payload is checked as UTF-8 once, then parsed as text: serde_json's byte reader
        // checks every string on its own (a million digests), its text reader does not need to.
        let message = std::str::from_utf8(&self.buffer[4..4 + len])
            .map_err(|e| WireError::Malformed(format!("the payload is not UTF-8: {e}")))
            .and_then(|text| serde_json::from_str(text).map_err(|e| WireError::Malformed(e.to_string())));
        self.buffer.drain(..4 + len);
        // A large snapshot's room is not kept for the life of the connection (128 MiB at a
        // million tokens): the next one gets fresh room when its length arrives.
        if self.buffer.capacity() > KEPT_ROOM {
            self.buffer.shrink_to(KEPT_ROOM);
        }
        message.map(Some)
    }
}

/// How many bytes of a frame a reader should ask for next (at least 1).
pub fn read_hint(decoder: &Decoder) -> usize {
    match decoder.check_length() {
        Ok(Some(len)) => (4 + len).saturating_sub(decoder.buffer.len()).max(1),
        _ => 4usize.saturating_sub(decoder.buffer.len()).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_frames_room_is_given_back_once_it_is_decoded() {
        let big = Message::Refused { reason: "x".repeat(4 * KEPT_ROOM) };
        let mut decoder = Decoder::default();
        decoder.push(&encode(&big)).unwrap();
        decoder.push(&encode(&Message::Ack { revision: 1 })[..3]).unwrap();
        assert!(decoder.buffer.capacity() > 4 * KEPT_ROOM);
        assert_eq!(decoder.next_message().unwrap(), Some(big));
        assert!(decoder.buffer.capacity() <= KEPT_ROOM, "kept {}", decoder.buffer.capacity());
        assert_eq!(decoder.buffer.len(), 3, "the next frame's first bytes stay");
    }
}
