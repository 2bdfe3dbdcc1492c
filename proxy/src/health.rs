//! The metrics listener: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (a snapshot is loaded: without one the proxy cannot authenticate anybody).
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};

use crate::http1::head::parse_request;
use crate::io::{read_more, write_all};
use crate::respond;

/// Connections the listener serves at once; one more is closed at once (a scraper and a few
/// probes need a handful, and an unauthenticated port must not hold the process's descriptors).
const MAX_OPEN: usize = 64;

/// The whole of one connection: its request and the answer.
const EXCHANGE_TIME: Duration = Duration::from_secs(10);

pub async fn serve(listener: Rc<TcpListener>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait, rather than retry at once and hold the core.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= MAX_OPEN {
            tracing::debug!(MAX_OPEN, "metrics listener: too many connections; closing one");
            continue;
        }
        open.set(open.get() + 1);
        let open = Open(open.clone());
        monoio::spawn(async move {
            let _open = open;
            let _ = crate::io::timeout(EXCHANGE_TIME, answer(stream)).await;
        });
    }
}

/// Counts a connection until it ends.
struct Open(Rc<Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

async fn answer(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        let (r, b) = read_more(&mut stream, buf).await;
        buf = b;
        if !matches!(r, Ok(n) if n > 0) {
            return;
        }
        match parse_request(&buf) {
            Ok(Some((head, _))) => break head,
            Ok(None) => continue,
            Err(_) => return,
        }
    };
    let path = head.target.split('?').next().unwrap_or_default();
    let answer = match path {
        "/metrics" => respond::response(200, "text/plain; version=0.0.4", &crate::metrics::render(), true, ""),
        "/healthz" => respond::response(200, "text/plain", "ok\n", true, ""),
        "/readyz" if crate::drain::draining() => {
            respond::response(503, "text/plain", "not ready: stopping, draining the requests in flight\n", true, "")
        }
        "/readyz" => match crate::tables::current() {
            // Serving the last good snapshot while admin is away is by design: still ready, but
            // the answer says so.
            Some(t) => {
                let away = crate::control::admin_gone_for()
                    .map_or(String::new(), |s| format!("; admin disconnected for {s} s (serving the last snapshot)"));
                respond::response(
                    200,
                    "text/plain",
                    &format!("ready: snapshot revision {}{away}\n", t.revision),
                    true,
                    "",
                )
            }
            None => respond::response(503, "text/plain", "not ready: no snapshot loaded\n", true, ""),
        },
        _ => respond::response(404, "text/plain", "not found\n", true, ""),
    };
    let _ = write_all(&mut stream, answer).await;
}
