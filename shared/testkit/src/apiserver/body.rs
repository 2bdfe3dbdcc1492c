//! Response bodies: whole ones, and streamed ones fed through a channel (watch, logs). Sending
//! an `Err` on the channel makes hyper abort the connection (a truncated stream).
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, io::Error>;
pub type Chunks = mpsc::Sender<Result<Bytes, io::Error>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json(value: &Value) -> Body {
    full(serde_json::to_vec(value).expect("JSON"))
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// A streamed body and the sender that feeds it; the stream ends when the sender is dropped.
pub fn channel() -> (Chunks, Body) {
    let (tx, rx) = mpsc::channel(64);
    (tx, ChannelBody { rx }.boxed())
}
