//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events in a chunked body,
//! each flushed at once, open until the client goes, the test closes or aborts streams, or the
//! request's `timeoutSeconds` (at most 30 minutes) passes.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::body::{self, Body, Chunks};
use super::store::{table, Event, Kind};
use super::{State, StreamControl};

/// What a watch selects and how it renders objects.
pub struct WatchSpec {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Resume after this resourceVersion; `None` (or 0) starts with ADDED for what exists.
    pub since: Option<u64>,
    /// Render objects as one-row Tables, with this includeObject.
    pub table: Option<String>,
    pub timeout: Duration,
}

impl WatchSpec {
    fn selects(&self, e: &Event) -> bool {
        e.kind == self.kind
            && self.namespace.as_ref().is_none_or(|ns| *ns == e.namespace)
            && self.name.as_ref().is_none_or(|n| e.object["metadata"]["name"].as_str() == Some(n))
    }

    fn render(&self, event_type: &str, object: &Value, rv: u64) -> Bytes {
        let object = match &self.table {
            Some(include) => table(self.kind, std::slice::from_ref(object), rv, include),
            None => object.clone(),
        };
        let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).expect("JSON");
        line.push(b'\n');
        line.into()
    }
}

pub fn start(state: &Arc<State>, spec: WatchSpec) -> Body {
    let (tx, body) = body::channel();
    let (initial, past, mut events) = {
        let store = state.store.lock().unwrap();
        let since = spec.since.filter(|rv| *rv > 0);
        let initial = match since {
            None => store.list(spec.kind, spec.namespace.as_deref(), spec.name.as_deref()),
            Some(_) => Vec::new(),
        };
        let (past, rx) = store.subscribe(since.unwrap_or(store.resource_version));
        (initial.into_iter().map(|o| (o, store.resource_version)).collect::<Vec<_>>(), past, rx)
    };
    let mut control = state.streams.subscribe();
    let open = OpenWatch::new(state.open_watches.clone());
    let task = tokio::spawn(async move {
        let _open = open;
        for (o, rv) in initial {
            if send(&tx, spec.render("ADDED", &o, rv)).await.is_err() {
                return;
            }
        }
        for e in past.iter().filter(|e| spec.selects(e)) {
            if send(&tx, spec.render(&e.event_type, &e.object, e.resource_version)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(spec.timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(e) if spec.selects(&e) => {
                        if send(&tx, spec.render(&e.event_type, &e.object, e.resource_version)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
                _ = &mut deadline => return,
                c = control.changed() => {
                    if StreamControl::ends_stream(c, &control, &tx, "watch").await {
                        return;
                    }
                }
            }
        }
    });
    state.track(task.abort_handle());
    body
}

async fn send(tx: &Chunks, bytes: Bytes) -> Result<(), ()> {
    tx.send(Ok(bytes)).await.map_err(|_| ())
}

/// Counts a watch as open from subscription until its task ends.
struct OpenWatch(Arc<AtomicUsize>);

impl OpenWatch {
    fn new(count: Arc<AtomicUsize>) -> OpenWatch {
        count.fetch_add(1, Ordering::SeqCst);
        OpenWatch(count)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
