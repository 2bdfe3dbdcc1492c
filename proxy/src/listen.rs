//! Runtimes and listeners: one monoio runtime per core, each with its own SO_REUSEPORT
//! listeners on the TLS and the plain port (the kernel spreads connections across cores), and
//! the metrics listener on core 0. io_uring when the kernel allows it, epoll otherwise
//! (`BCS_PROXY_DRIVER=legacy` forces epoll, as CI does once).
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use monoio::net::{ListenerOpts, TcpListener};

use crate::conn::{self, Settings};
use crate::health;
use crate::tls;

/// What every core needs to start.
#[derive(Clone)]
pub struct Plan {
    pub cores: usize,
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    pub plain: Option<SocketAddr>,
    pub metrics: SocketAddr,
    pub settings: Arc<Settings>,
    /// Client connections each core holds at once.
    pub max_connections_per_core: usize,
    /// `proxy_config.io_driver: epoll`: never io_uring.
    pub epoll: bool,
}

impl Plan {
    /// Starts every core; returns once all of them listen (or with the first start-up error).
    /// The cores then run until the process ends.
    pub fn start(self) -> anyhow::Result<()> {
        start(self)
    }
}

fn start(plan: Plan) -> anyhow::Result<()> {
    crate::metrics::set_connection_limit(plan.max_connections_per_core * plan.cores);
    crate::upstream::set_limits(plan.settings.send_timeout, plan.settings.response_head_timeout);
    let forced = std::env::var("BCS_PROXY_DRIVER").is_ok_and(|d| d == "legacy");
    let legacy = forced || plan.epoll;
    let uring = !legacy && monoio::utils::detect_uring();
    let driver = if forced {
        "epoll (forced by BCS_PROXY_DRIVER=legacy)"
    } else if plan.epoll {
        "epoll (proxy_config.io_driver)"
    } else if uring {
        "io_uring"
    } else {
        "epoll (io_uring unavailable)"
    };
    tracing::info!(cores = plan.cores, driver, "starting the proxy runtimes");
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    for core in 0..plan.cores {
        let plan = plan.clone();
        let ready = ready_tx.clone();
        std::thread::Builder::new().name(format!("bcs-proxy-{core}")).spawn(move || {
            let run = core_main(core, plan, ready.clone());
            let result = if legacy {
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .attach_thread_pool(crate::resolve::pool())
                    .build()
                    .map(|mut rt| rt.block_on(run))
            } else {
                fusion_runtime().map(|mut rt| rt.block_on(run))
            };
            if let Err(e) = result {
                let _ = ready.send(Err(anyhow::anyhow!("core {core}: cannot build the runtime: {e}")));
            }
        })?;
    }
    drop(ready_tx);
    for _ in 0..plan.cores {
        ready_rx.recv().context("a core thread ended before it started")??;
    }
    // The start line named the driver chosen for all; a core whose ring failed said so itself.
    let cores_on_epoll = if uring { RING_FAILED.load(Ordering::Relaxed) } else { plan.cores };
    tracing::info!(cores_on_epoll, "proxy ready to accept");
    Ok(())
}

type Fusion = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// io_uring (when the kernel allows it) with cooperative task running: completions posted from
/// another core are run when this thread next enters the kernel, not by interrupting it (the
/// benchmark measured about a tenth of the proxy's CPU in those interrupts without it). Kernels
/// before 5.19 refuse the flags: then a plain ring; then epoll. (`DEFER_TASKRUN` with
/// `SINGLE_ISSUER` was measured too: no fewer CPU-seconds per request, more context switches
/// and a worse p99, so it is not used.)
///
/// monoio's check that io_uring works opens a ring of two entries; a core's ring has 1 024.
/// Where the first fits in the locked-memory limit and the second does not (kernels before
/// 5.12 account rings to RLIMIT_MEMLOCK, 64 KiB by default in containers), the core runs on
/// epoll with a warning, instead of the proxy exiting at every start.
fn fusion_runtime() -> std::io::Result<Fusion> {
    let mut cooperative = io_uring::IoUring::builder();
    cooperative.setup_coop_taskrun().setup_taskrun_flag();
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .attach_thread_pool(crate::resolve::pool())
        .uring_builder(cooperative)
        .build()
        .or_else(|e| {
            tracing::info!(error = %e, "io_uring without cooperative task running");
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .attach_thread_pool(crate::resolve::pool())
                .build()
        })
        .or_else(|e| {
            RING_FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = %e,
                "cannot make this core's io_uring ring (too little locked memory? see tuning/README.md): \
                 it runs on epoll; raise LimitMEMLOCK or set proxy_config.io_driver: epoll"
            );
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .attach_thread_pool(crate::resolve::pool())
                .build()
                .map(monoio::FusionRuntime::Legacy)
        })
}

/// Cores that run on epoll because their io_uring ring could not be made.
static RING_FAILED: AtomicUsize = AtomicUsize::new(0);

fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(4096);
    TcpListener::bind_with_config(address, &opts).with_context(|| format!("cannot listen on {what} {address}"))
}

/// A client listener: [`bind`], and shut by the drain ([`crate::drain`]).
fn bind_client(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = bind(address, what)?;
    crate::drain::add_listener(std::os::fd::AsRawFd::as_raw_fd(&listener));
    Ok(listener)
}

async fn core_main(core: usize, plan: Plan, ready: mpsc::Sender<anyhow::Result<()>>) {
    let settings = plan.settings.clone();
    let mut listeners = Vec::new();
    let bound = (|| -> anyhow::Result<()> {
        if let Some((address, config)) = &plan.tls {
            listeners.push((bind_client(*address, "service_config address:port")?, Some(config.clone())));
        }
        if let Some(address) = plan.plain {
            listeners.push((bind_client(address, "service_config insecure_address:insecure_port")?, None));
        }
        Ok(())
    })();
    let metrics = if core == 0 { Some(bind(plan.metrics, "metric_config metric_port")) } else { None };
    let bound = bound.and_then(|_| metrics.transpose().map(|m| m.map(Rc::new)));
    let metrics = match bound {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if let Some(listener) = metrics {
        monoio::spawn(health::serve(listener));
    }
    let open = Rc::new(std::cell::Cell::new(0usize));
    for (listener, tls) in listeners {
        monoio::spawn(accept_loop(listener, tls, settings.clone(), open.clone(), plan.max_connections_per_core));
    }
    let _ = ready.send(Ok(()));
    // Housekeeping: close revoked streams, publish pool sizes, probe ejected addresses.
    let mut tick = 0u64;
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        crate::streams::sweep();
        crate::upstream::expire_idle();
        crate::upstream::forget_gone();
        crate::metrics::set_pooled(crate::upstream::pooled_count());
        crate::metrics::set_tls_configs(crate::upstream::tls_config_count());
        tick += 1;
        if tick.is_multiple_of(5) {
            crate::upstream::probe_ejected();
        }
    }
}

/// Decrements the core's open-connection count when the connection ends.
struct OpenGuard(Rc<std::cell::Cell<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
        crate::metrics::connection_closed();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    settings: Arc<Settings>,
    open: Rc<std::cell::Cell<usize>>,
    max_open: usize,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(_) | Err(_) if crate::drain::draining() => {
                tracing::debug!("the listener is shut: accepting no more");
                // Not closed: the drain may still be shutting its descriptor, which must not
                // be reused by another socket meanwhile. The process ends soon.
                std::mem::forget(listener);
                return;
            }
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let _ = stream.set_nodelay(true);
        crate::io::keep_alive(&stream, "client", Some(settings.send_timeout));
        let settings = settings.clone();
        let tls = tls.clone();
        let over_limit = open.get() >= max_open;
        open.set(open.get() + 1);
        crate::metrics::connection_opened();
        let guard = OpenGuard(open.clone());
        // Each phase's future is boxed, so that the task holds only the phase it is in: inline,
        // the task would be as large as the largest phase of any kind of connection (the TLS
        // handshake, a TLS client's requests) for its whole life, an idle plain watch included.
        monoio::spawn(async move {
            let _guard = guard;
            if over_limit {
                tracing::warn!(%peer, max_open, "connection limit reached: answering 503");
                Box::pin(overloaded(stream, tls)).await;
                return;
            }
            match tls {
                None => Box::pin(conn::serve(stream, peer, fd, settings)).await,
                Some(config) => {
                    match Box::pin(crate::io::timeout(Duration::from_secs(10), tls::accept(stream, config))).await {
                        Ok(Ok(stream)) => Box::pin(conn::serve(stream, peer, fd, settings)).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Answers 503 with Retry-After and closes (after the handshake on the TLS listener).
async fn overloaded(stream: monoio::net::TcpStream, tls: Option<Arc<rustls::ServerConfig>>) {
    let error = crate::error::ProxyError::Overloaded;
    // Counted as the gateway's own answer to a request it did not read (not timed).
    crate::metrics::gateway_error("other", "-", &error, None);
    let answer = crate::respond::error(&error, crate::respond::Shape::Rest, true);
    match tls {
        None => {
            let mut stream = stream;
            let _ = crate::io::write_all(&mut stream, answer).await;
        }
        Some(config) => {
            if let Ok(Ok(mut stream)) = crate::io::timeout(Duration::from_secs(5), tls::accept(stream, config)).await {
                let _ = crate::io::write_all(&mut stream, answer).await;
            }
        }
    }
}
