//! Upstream addresses to sockets: an IP at once, a host name through `getaddrinfo` on a small
//! pool of threads shared by every core, never on a core itself.
//!
//! A cluster's apiserver may be a name (managed Kubernetes services give one), and a lookup
//! waits on the network: glibc's resolver up to `timeout × attempts` per name server, 5 s each
//! by default. Run on a core, as monoio's `TcpStream::connect` runs it, one slow name server
//! would stop every client, watch and exec tunnel of that core for as long, on every pool miss
//! of that cluster and every probe of its address. Here the core only waits for the answer, as
//! for any other I/O, and the request's own connect timeout bounds that wait.
//!
//! Every address a name has is tried in the resolver's order until one accepts (a name with an
//! A record per apiserver keeps working while one of them is down).
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

use monoio::blocking::{DefaultThreadPool, ThreadPool};
use monoio::net::TcpStream;

/// Lookups run at once, for all cores together: each waits on the network, not the CPU.
const LOOKUP_THREADS: usize = 4;

/// Lookups queued or running, for all cores together. Past this a connect to a name fails at
/// once: with its name servers silent, a cluster's requests would otherwise pile up lookups
/// that outlive them, ahead of other clusters' names.
const MAX_LOOKUPS: usize = 64;

static POOL: LazyLock<DefaultThreadPool> = LazyLock::new(|| DefaultThreadPool::new(LOOKUP_THREADS));
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_LOOKUPS`], taken; given back when dropped.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        LOOKUPS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The lookup threads, for each core's runtime (`RuntimeBuilder::attach_thread_pool`).
pub fn pool() -> Box<dyn ThreadPool + Send + 'static> {
    Box::new(POOL.clone())
}

/// The addresses of `authority` (`host:port`; an IPv6 host in brackets): an IP without a
/// lookup, a name through the lookup threads.
pub async fn addresses(authority: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(address) = authority.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    if LOOKUPS.fetch_add(1, Ordering::Relaxed) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::Relaxed);
        return Err(io::Error::other(format!("{MAX_LOOKUPS} name lookups are already waiting for an answer")));
    }
    let name = authority.to_owned();
    // The slot is given back when the lookup ends (or is dropped unrun), not when this future
    // does: a request that gave up leaves its lookup running on a thread.
    let slot = Slot;
    let lookup = monoio::spawn_blocking(move || {
        let _slot = slot;
        name.to_socket_addrs().map(Iterator::collect::<Vec<_>>)
    });
    let found = lookup.await.map_err(|_| io::Error::other("the name lookup was cancelled"))??;
    if found.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the name has no address"));
    }
    Ok(found)
}

/// A TCP connection to the first of `authority`'s addresses that accepts.
pub async fn connect(authority: &str) -> io::Result<TcpStream> {
    let mut refused = None;
    for address in addresses(authority).await? {
        match TcpStream::connect_addr(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.expect("addresses() returns at least one"))
}
