//! The REST port's connections: hyper's HTTP/1 with a timer, so a request head must arrive
//! within [`HEAD_TIMEOUT`] (hyper drops its own 30-s default when no timer is given, as
//! `axum::serve` gives none); at most [`MAX_CONNECTIONS`] at once; and a shutdown that lets
//! requests in flight finish for [`DRAIN_TIME`], then closes what is left, so one stalled
//! client cannot keep the process from exiting. The request body's own limit is the
//! extractor's ([`super::extract::BODY_TIME`]).
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

/// How long a client has to send a whole request head, which is also how long a kept-alive
/// connection may idle before its next one (hyper's timer runs from the end of the last
/// answer). Longer than the proxy's pooled connections idle (`upstream::POOL_IDLE`, 30 s), so
/// admin never closes one the proxy is about to reuse: a POST sent as the close comes would
/// fail with nothing to retry it.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long requests in flight may take to finish after SIGTERM.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown`, then drains.
pub async fn serve<S>(listener: TcpListener, service: S, mut shutdown: Shutdown)
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        // Reap finished connections as we go, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait, rather than retry at once.
                tracing::warn!(error = %e, "admin REST: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, MAX_CONNECTIONS, "admin REST: connection limit reached; closing one");
            continue;
        };
        let service = TowerToHyperService::new(service.clone());
        let mut shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "admin REST connection ended");
                    }
                    return;
                }
                _ = shutdown.wait() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIME, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = connections.len(), "admin REST: closing connections still open after {DRAIN_TIME:?}");
        connections.abort_all();
    }
}
