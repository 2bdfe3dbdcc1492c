//! Port-forward over a SPDY session (plain `SPDY/3.1`, or tunnelled in a WebSocket): each
//! forwarded connection is a pair of streams (`streamType: error` and `streamType: data`,
//! sharing `requestID`); the fake's "pod port" is an echo service, so every byte written to a
//! data stream comes back on it. The error stream is closed, empty, when its data stream ends.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::spdy_session::{Stream, StreamWriter};

/// Serves port-forward streams until the session ends; records each `port` header asked for.
pub async fn serve(mut streams: mpsc::Receiver<Stream>, ports: Arc<Mutex<Vec<u16>>>) {
    let errors: Arc<Mutex<HashMap<String, StreamWriter>>> = Arc::default();
    while let Some(stream) = streams.recv().await {
        let request = stream.header("requestid").unwrap_or("").to_string();
        match stream.header("streamtype") {
            Some("error") => {
                errors.lock().unwrap().insert(request, stream.writer.clone());
                // Nothing is expected from the client on the error stream: drain it.
                tokio::spawn(drain(stream.data));
            }
            Some("data") => {
                if let Some(port) = stream.header("port").and_then(|p| p.parse().ok()) {
                    ports.lock().unwrap().push(port);
                }
                let errors = errors.clone();
                tokio::spawn(async move {
                    let Stream { mut data, writer, .. } = stream;
                    while let Some(chunk) = data.recv().await {
                        if !writer.write(chunk).await {
                            break;
                        }
                    }
                    writer.close().await;
                    let error = errors.lock().unwrap().remove(&request);
                    if let Some(e) = error {
                        e.close().await;
                    }
                });
            }
            _ => drop(stream),
        }
    }
}

async fn drain(mut data: mpsc::Receiver<Vec<u8>>) {
    while data.recv().await.is_some() {}
}
