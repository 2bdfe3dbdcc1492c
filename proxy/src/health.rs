//! The metrics listener: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (a snapshot is loaded: without one the proxy cannot authenticate anybody).
use monoio::net::TcpListener;
use std::rc::Rc;

use crate::http1::head::parse_request;
use crate::io::{read_more, write_all};
use crate::respond;

pub async fn serve(listener: Rc<TcpListener>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        monoio::spawn(async move {
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
                "/readyz" => match crate::tables::current() {
                    Some(t) => respond::response(
                        200,
                        "text/plain",
                        &format!("ready: snapshot revision {}\n", t.revision),
                        true,
                        "",
                    ),
                    None => respond::response(503, "text/plain", "not ready: no snapshot loaded\n", true, ""),
                },
                _ => respond::response(404, "text/plain", "not found\n", true, ""),
            };
            let _ = write_all(&mut stream, answer).await;
        });
    }
}
