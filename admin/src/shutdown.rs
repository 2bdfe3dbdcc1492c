//! One shutdown signal, many listeners: the REST server, the snapshot socket, the snapshot
//! rebuilds and the proxy supervisor all stop on the same SIGTERM or SIGINT.
//!
//! A `watch` rather than a `Notify`: a listener that starts waiting after the signal fired
//! still sees it.
use std::sync::Arc;

use tokio::sync::watch;

/// Fires the signal (once is enough; later calls do nothing).
#[derive(Clone)]
pub struct Trigger(Arc<watch::Sender<bool>>);

/// Waits for the signal. Clone one per listener.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (Trigger(Arc::new(sender)), Shutdown(receiver))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Returns once the signal has fired (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Fires `trigger` on SIGINT or SIGTERM.
pub async fn on_signals(trigger: Trigger) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    trigger.fire();
}
