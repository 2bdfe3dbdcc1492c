//! Pod logs: the configured lines, then (with `follow=true`) one line per interval for as long
//! as the client stays, the test closes streams, or 10 minutes pass.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::body::{self, Body};
use super::{State, StreamControl};

pub fn start(state: &Arc<State>, pod: &str, follow: bool) -> Body {
    let (tx, body) = body::channel();
    let lines = state.options.log_lines.clone();
    let interval = state.options.log_interval.max(Duration::from_millis(10));
    let pod = pod.to_string();
    let mut control = state.streams.subscribe();
    let task = tokio::spawn(async move {
        for l in lines {
            if tx.send(Ok(Bytes::from(format!("{l}\n")))).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(600));
        tokio::pin!(deadline);
        for n in 1u64.. {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {
                    if tx.send(Ok(Bytes::from(format!("{pod} tick {n}\n")))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = &mut deadline => return,
                c = control.changed() => {
                    if StreamControl::ends_stream(c, &control, &tx, "log stream").await {
                        return;
                    }
                }
            }
        }
    });
    state.track(task.abort_handle());
    body
}
