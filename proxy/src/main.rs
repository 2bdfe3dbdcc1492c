//! `bcs-api-proxy --config=bcs-api.yaml`: the data plane. Usually started and supervised by
//! `bcs-api`; can also run on its own (it then serves its persisted snapshot until admin's
//! snapshot socket answers).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bcs_shared::config::{defaults, non_empty, Config};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[global_allocator]
static GLOBAL: bcs_shared::alloc::Mimalloc = bcs_shared::alloc::Mimalloc;

#[derive(Parser)]
#[command(
    name = "bcs-api-proxy",
    version,
    about = "bcs-api's data plane: proxies kubectl and REST calls to clusters and admin"
)]
struct Args {
    /// The configuration file (the same one bcs-api reads).
    #[arg(long, short = 'f', visible_alias = "file", default_value = "bcs-api.yaml")]
    config: PathBuf,
    /// Log format: text or json (overrides log_config.log_format).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

/// SIGTERM and SIGINT are blocked in every thread (the mask is inherited) and taken by
/// [`wait_for_termination`] on the main thread, so the process exits 0 with its logs flushed.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// How long the requests in flight get at a stop: under bcs-api's 10 s before SIGKILL.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

fn wait_for_termination() -> i32 {
    let set = block_termination_signals();
    let mut signal = 0;
    // SAFETY: sigwait on a valid set of signals blocked in this thread.
    unsafe { libc::sigwait(&set, &mut signal) };
    signal
}

fn main() -> ExitCode {
    block_termination_signals();
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bcs-api-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let _guard = match bcs_shared::logging::init(&config, args.log_format.as_deref(), "bcs-api-proxy.log") {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("bcs-api-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bcs-api-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn socket_address(host: &str, port: u16, key: &str) -> anyhow::Result<SocketAddr> {
    let ip: std::net::IpAddr = host.parse().with_context(|| format!("{key}: {host:?} is not an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

fn tls_config(config: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_file = non_empty(&config.cert_config.server_cert_file).context("cert_config.server_cert_file")?;
    let key_file = non_empty(&config.cert_config.server_key_file).context("cert_config.server_key_file")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect())
        .with_context(|| format!("cert_config.server_cert_file {cert_file}"))?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).with_context(|| format!("cert_config.server_key_file {key_file}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("cert_config: the certificate and key do not match")?;
    // HTTP/1.1 only for now: kubectl then uses HTTP/1.1, with upgrades for exec and port-forward.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// TLS towards mesos-drivers and console proxies: trusts `cert_config.ca_file`, presents the
/// client certificate when one is configured. None when no CA file is set.
fn internal_tls_config(config: &Config) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let Some(ca_file) = non_empty(&config.cert_config.ca_file) else {
        let cert = &config.cert_config;
        if non_empty(&cert.client_cert_file).is_some() || non_empty(&cert.client_key_file).is_some() {
            tracing::warn!(
                "cert_config: a client certificate is set without ca_file: https drivers and console proxies \
                 are not reached, so it is not used"
            );
        }
        return Ok(None);
    };
    let pem = std::fs::read(ca_file).with_context(|| format!("cert_config.ca_file {ca_file}"))?;
    let roots =
        bcs_shared::tls::roots_from_pem(&pem).map_err(|e| anyhow::anyhow!("cert_config.ca_file {ca_file} {e}"))?;
    let builder = bcs_shared::tls::client_trusting(roots);
    let mut config =
        match (non_empty(&config.cert_config.client_cert_file), non_empty(&config.cert_config.client_key_file)) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect())
                    .with_context(|| format!("cert_config.client_cert_file {cert}"))?;
                let key =
                    PrivateKeyDer::from_pem_file(key).with_context(|| format!("cert_config.client_key_file {key}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("cert_config: the client certificate and key do not match")?
            }
            (None, None) => builder.with_no_client_auth(),
            // One without the other is a mistake, not a choice to present no certificate.
            (Some(_), None) => anyhow::bail!("cert_config.client_cert_file is set but client_key_file is not"),
            (None, Some(_)) => anyhow::bail!("cert_config.client_key_file is set but client_cert_file is not"),
        };
    config.resumption = bcs_proxy::tickets::resumption();
    Ok(Some(Arc::new(config)))
}

fn run(config: &Config) -> anyhow::Result<()> {
    let service = &config.service_config;
    let tls = if config.tls_configured() {
        let address = socket_address(
            non_empty(&service.address).unwrap_or(defaults::SERVICE_ADDRESS),
            service.port.unwrap_or(defaults::SERVICE_PORT),
            "service_config.address",
        )?;
        Some((address, tls_config(config)?))
    } else {
        tracing::warn!("cert_config has no server certificate: the TLS listener is not started");
        None
    };
    let plain = socket_address(
        non_empty(&service.insecure_address).unwrap_or(defaults::INSECURE_ADDRESS),
        service.insecure_port.unwrap_or(defaults::INSECURE_PORT),
        "service_config.insecure_address",
    )?;
    if !plain.ip().is_loopback() {
        tracing::warn!(address = %plain, "the plain-HTTP listener is not on loopback: tokens would travel in clear");
    }
    let metrics_host = non_empty(&config.local_config.local_ip).unwrap_or("0.0.0.0");
    let metrics = socket_address(
        metrics_host,
        config.metric_config.metric_port.unwrap_or(defaults::METRIC_PORT),
        "local_config.local_ip",
    )?;
    let admin =
        bcs_shared::snapshot::parse_address(&format!("http://{}", config.admin_address())).context("admin_config")?;
    let cores = match config.proxy_config.cores.unwrap_or(0) {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n as usize,
    };

    let data_dir = config.data_dir();
    // 0700, as admin makes it: a proxy started first must not leave it open to other users.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&data_dir)
        .with_context(|| format!("storage.data_dir {}", data_dir.display()))?;
    let sealer = bcs_shared::sealer::Sealer::load_or_create(&config.secret_key_file())?;
    let socket = PathBuf::from(non_empty(&config.admin_config.snapshot_socket).unwrap_or(defaults::SNAPSHOT_SOCKET));
    let control = bcs_proxy::control::Control::new(socket, data_dir, sealer);
    control.load_persisted();
    std::thread::Builder::new().name("bcs-proxy-control".into()).spawn(move || control.run())?;

    let console_allowed = config
        .proxy_config
        .webconsole_allowed_hosts
        .iter()
        .flatten()
        .map(|c| bcs_proxy::allow::Cidr::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("proxy_config.webconsole_allowed_hosts: {e}"))?;
    let internal_tls = internal_tls_config(config)?;
    let console_port = config.consoleproxy_port.unwrap_or(8083);
    let max_connections = config.proxy_config.max_connections.unwrap_or(20_000).max(1) as usize;
    let max_connections_per_core = max_connections.div_ceil(cores);
    let seconds = |value: Option<u64>, what: &str, default: u64| -> anyhow::Result<std::time::Duration> {
        match value.unwrap_or(default) {
            0 => anyhow::bail!("proxy_config.{what} must be at least 1"),
            s => Ok(std::time::Duration::from_secs(s)),
        }
    };
    let proxy_config = &config.proxy_config;
    let body_timeout = seconds(proxy_config.client_body_timeout_seconds, "client_body_timeout_seconds", 60)?;
    let send_timeout = seconds(proxy_config.send_timeout_seconds, "send_timeout_seconds", 60)?;
    let response_head_timeout =
        seconds(proxy_config.response_head_timeout_seconds, "response_head_timeout_seconds", 120)?;
    let settings = bcs_proxy::conn::Settings {
        admin: admin.into(),
        internal_tls,
        console_port,
        console_allowed,
        body_timeout,
        send_timeout,
        response_head_timeout,
        ..Default::default()
    };
    bcs_proxy::listen::Plan {
        cores,
        tls,
        plain: Some(plain),
        metrics,
        settings: Arc::new(settings),
        max_connections_per_core,
        epoll: non_empty(&config.proxy_config.io_driver) == Some("epoll"),
    }
    .start()?;
    let signal = wait_for_termination();
    tracing::info!(signal, grace = ?DRAIN_GRACE, "stopping: accepting no more, draining the requests in flight");
    let left = bcs_proxy::drain::drain(DRAIN_GRACE);
    tracing::info!(signal, cut = left, "shutting down");
    Ok(())
}
