//! Start-up and shutdown of the admin process.
//!
//! Start: data directory, key file, store, bootstrap users, the first snapshot, the REST
//! listener, the snapshot socket, then the proxy (which connects to the socket). Stop, on
//! SIGTERM or SIGINT: every task gets the same signal ([`crate::shutdown`]); the REST server
//! finishes its requests, the proxy gets SIGTERM, and the snapshot socket is closed and its
//! file removed.
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bcs_shared::config::{defaults, non_empty, Config};
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::metrics::Metrics;
use crate::rest::{router, App};
use crate::sealer::Sealer;
use crate::snapshot::{Publisher, SnapshotServer};
use crate::store::{self, Dsn, Store};

/// Runs the admin until SIGINT or SIGTERM. `config_path` is the file `config` was read from;
/// the supervised proxy is given the same path, and the same `--log-format` if one was given
/// (its lines share bcs-api's stderr).
pub async fn run(config: Config, config_path: &Path, log_format: Option<&str>) -> anyhow::Result<()> {
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
    key_opens_the_store(&store, &sealer, &config.secret_key_file()).await?;

    crate::bootstrap::ensure_users(&store, &config.bootstrap_users, &mut std::io::stdout()).await?;

    if !config.turn_on_rbac() {
        tracing::warn!(
            "rbac.turn_on_rbac is false: every user will act on clusters with the cluster's own (admin) token"
        );
    }
    if non_empty(&config.license_server_config.ls_address).is_some() {
        tracing::info!("license_server_config is accepted and ignored");
    }
    if let Some(dir) = non_empty(&config.process_config.pid_dir) {
        std::fs::create_dir_all(dir).with_context(|| format!("process_config.pid_dir {dir}"))?;
        std::fs::write(std::path::Path::new(dir).join("bcs-api.pid"), std::process::id().to_string())?;
    }

    let metrics = Metrics::default();
    let snapshots = Arc::new(Publisher::new(config.turn_on_rbac(), metrics.snapshot.clone()));
    let leader = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // With ZooKeeper, the leader lock decides `leader` (false until it is held).
    let zookeeper = crate::zk::Settings::from_config(&config).map(|settings| {
        let status = Arc::new(crate::zk::Status::new(metrics.registry()));
        let leadership = Arc::new(crate::zk::Leadership::new(leader.clone(), metrics.registry()));
        (settings, status, leadership)
    });
    let zk_status = zookeeper.as_ref().map(|(_, status, _)| status.clone());
    let rbac = crate::rbac::Rbac::new(crate::rbac::Settings::from_config(&config)?, metrics.rbac.clone());
    if rbac.enabled() && !config.turn_on_rbac() {
        tracing::warn!(
            "RBAC sync is on but rbac.turn_on_rbac is false: the bindings have no effect through the gateway"
        );
    }
    let app = Arc::new(App {
        store,
        sealer,
        metrics,
        external_url: config.external_url(),
        gateway_ca: crate::rest::onboarding::gateway_ca(&config),
        snapshots,
        leader,
        zookeeper: zk_status,
        rbac,
        max_clusters_per_user: match config.admin_config.max_clusters_per_user.unwrap_or(1000) {
            0 => None,
            most => Some(most),
        },
    });
    match app.max_clusters_per_user {
        Some(most) => tracing::info!(
            most,
            "admin_config.max_clusters_per_user: clusters a user other than a super user may create"
        ),
        None => tracing::info!("admin_config.max_clusters_per_user is 0: users may create any number of clusters"),
    }
    if zookeeper.is_some() {
        // Until discovery's first read, snapshots leave the proxies' mesos-drivers as they are.
        app.snapshots.await_discovery();
    }
    let first_wait = app.snapshots.rebuild(&app.store, &app.sealer).await.next_wait();

    let address: SocketAddr = config.admin_address().parse().context("admin_config.address")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on admin_config {address}"))?;
    tracing::info!(%address, "admin REST API listening");
    let socket_path = snapshot_socket(&config);
    let socket = SnapshotServer::bind(&socket_path)?;

    let (trigger, shutdown) = crate::shutdown::channel();
    tokio::spawn(crate::shutdown::on_signals(trigger.clone()));
    let rebuilds = tokio::spawn({
        let (app, shutdown) = (app.clone(), shutdown.clone());
        async move { app.snapshots.run(&app.store, &app.sealer, first_wait, shutdown).await }
    });
    let serving = tokio::spawn(socket.serve(app.snapshots.clone(), shutdown.clone()));
    let rbac_sync = tokio::spawn(crate::rbac::run(app.clone(), shutdown.clone()));
    let zookeeper = zookeeper.map(|(settings, status, leadership)| {
        tracing::info!(servers = %settings.servers, "ZooKeeper: discovery, registration and leader lock on");
        tokio::spawn(crate::zk::run(settings, app.snapshots.clone(), leadership, status, shutdown.clone()))
    });
    if zookeeper.is_none() {
        tracing::info!("zk_config.bcs_zookeeper is empty: no mesos-driver discovery; this instance is the leader");
    }
    let supervisor = if config.admin_config.spawn_proxy.unwrap_or(true) {
        // Registered without a binary too: an alert on `bcs_api_proxy_running == 0` sees it.
        let metrics = crate::metrics::ProxyMetrics::new(app.metrics.registry());
        match crate::supervisor::find_binary() {
            Ok(binary) => {
                let proxy = crate::supervisor::ProxyCommand {
                    binary,
                    config: config_path.to_owned(),
                    log_format: log_format.map(str::to_owned),
                    pid_file: socket_path.with_file_name(crate::supervisor::PID_FILE),
                    metrics,
                };
                Some(tokio::spawn(crate::supervisor::run(proxy, shutdown.clone())))
            }
            Err(why) => {
                tracing::error!(%why,
                    "admin_config.spawn_proxy: cannot find bcs-api-proxy; running without a data plane");
                None
            }
        }
    } else {
        tracing::info!("admin_config.spawn_proxy is false: run bcs-api-proxy separately");
        None
    };

    let service = NormalizePathLayer::trim_trailing_slash().layer(router(app));
    crate::rest::listener::serve(listener, service, shutdown.clone()).await;
    // Should the REST server end otherwise, stop everything else too.
    trigger.fire();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    let _ = serving.await;
    let _ = rbac_sync.await;
    if let Some(zookeeper) = zookeeper {
        let _ = zookeeper.await;
    }
    let _ = rebuilds.await;
    tracing::info!("admin stopped");
    Ok(())
}

/// `admin_config.snapshot_socket`, default `./run/bcs-api.sock`.
fn snapshot_socket(config: &Config) -> PathBuf {
    PathBuf::from(non_empty(&config.admin_config.snapshot_socket).unwrap_or(defaults::SNAPSHOT_SOCKET))
}

/// Refuses to start with a key file that opens none of the store's sealed cluster tokens (a new
/// key file on a host that lost its own, another instance's key): every cluster would drop out of
/// the snapshot, and each proxy would take that as its last good state.
async fn key_opens_the_store(store: &Store, sealer: &Sealer, key_file: &Path) -> anyhow::Result<()> {
    let sample = store.sealed_sample(16).await.context("cannot read the store")?;
    let opens = |(cluster_id, sealed): &(String, String)| {
        sealer.open(&crate::sealer::cluster_token_purpose(cluster_id), sealed).is_ok()
    };
    if !sample.is_empty() && !sample.iter().any(opens) {
        anyhow::bail!(
            "storage.secret_key_file {} opens none of the store's sealed cluster tokens ({} tried): it is not \
             the key they were sealed with. Restore that key file (instances on one database share one)",
            key_file.display(),
            sample.len()
        );
    }
    Ok(())
}
