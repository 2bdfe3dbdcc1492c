//! Start-up and shutdown of the admin process.
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use anyhow::Context;
use bcs_shared::config::{non_empty, Config};
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::metrics::Metrics;
use crate::rest::{router, App};
use crate::sealer::Sealer;
use crate::store::{self, Dsn};

/// Runs the admin until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .with_context(|| format!("storage.data_dir {}", data_dir.display()))?;
    let sealer = Sealer::load_or_create(&config.secret_key_file())?;

    let dsn = config.core_database.dsn.as_ref().map(|d| d.expose()).unwrap_or("");
    let dsn = Dsn::parse(dsn).map_err(|e| anyhow::anyhow!("core_database.dsn: {e}"))?;
    let store = store::open(&dsn, &data_dir).await.context("cannot open the store")?;
    tracing::info!(store = %store.describe(), "store ready");

    crate::bootstrap::ensure_users(&store, &config.bootstrap_users, &mut std::io::stdout()).await?;

    if !config.turn_on_rbac() {
        tracing::warn!(
            "rbac.turn_on_rbac is false: every user will act on clusters with the cluster's own (admin) token"
        );
    }
    if config.admin_config.spawn_proxy.unwrap_or(true) {
        tracing::warn!(
            "admin_config.spawn_proxy: this build has no data plane yet; the proxy listeners are not started"
        );
    }
    if non_empty(&config.license_server_config.ls_address).is_some() {
        tracing::info!("license_server_config is accepted and ignored");
    }
    if let Some(dir) = non_empty(&config.process_config.pid_dir) {
        std::fs::create_dir_all(dir).with_context(|| format!("process_config.pid_dir {dir}"))?;
        std::fs::write(std::path::Path::new(dir).join("bcs-api.pid"), std::process::id().to_string())?;
    }

    let app = Arc::new(App { store, sealer, metrics: Metrics::default(), external_url: config.external_url() });
    let address: SocketAddr = config.admin_address().parse().context("admin_config.address")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on admin_config {address}"))?;
    tracing::info!(%address, "admin REST API listening");

    let service = NormalizePathLayer::trim_trailing_slash().layer(router(app));
    axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(service))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("admin stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
