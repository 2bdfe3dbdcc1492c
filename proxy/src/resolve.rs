//! Upstream addresses to sockets: an IP at once, a host name through `getaddrinfo` on a small
//! pool of threads shared by every core, never on a core itself.
//!
//! A cluster's apiserver may be a name (managed Kubernetes services give one), and a lookup
//! waits on the network: glibc's resolver up to `timeout × attempts` per name server, 5 s each
//! by default. Run on a core, as monoio's `TcpStream::connect` runs it, one slow name server
//! would stop every client, watch and exec tunnel of that core for as long, on every pool miss
//! of that cluster and every probe of its address. Here the core only waits for the answer, as
//! for any other I/O, for at most its own budget (`upstream::LOOKUP_TIMEOUT`; an IP and a name
//! known already arm no timer), apart from the connect timeout: a slow answer is not a silent
//! address.
//!
//! Every address a name has is tried in the resolver's order until one accepts (a name with an
//! A record per apiserver keeps working while one of them is down), each with its share of the
//! connect budget ([`connect_any`]). Each core looks a name up once however many requests want
//! it at the time, and keeps the answer for [`KNOWN_FOR`].
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::blocking::{DefaultThreadPool, ThreadPool};
use monoio::net::TcpStream;

/// Lookups run at once, for all cores together: each waits on the network, not the CPU.
const LOOKUP_THREADS: usize = 4;

/// Lookups queued or running, for all cores together (at most one per name and core). Past
/// this a connect to a name fails at once: silent name servers would otherwise pile up lookups
/// that outlive their requests, ahead of other clusters' names.
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

/// How long a name's addresses are used without asking again. Short: an apiserver moved to
/// another address is reached within it; long enough that a burst of new connections to a
/// named cluster (a proxy's start, a credential rotation emptying its pool) asks once.
const KNOWN_FOR: Duration = Duration::from_secs(10);

/// A name as this core knows it: its addresses until `until`, or a lookup under way that
/// every request for the name waits on (one lookup per name per core, not one per request).
enum Name {
    Known { addresses: Rc<[SocketAddr]>, until: Instant },
    Looking(Rc<Lookup>),
}

#[derive(Default)]
struct Lookup {
    /// The answer, once the lookup is over: the addresses, or what went wrong.
    answer: RefCell<Option<Result<Rc<[SocketAddr]>, String>>>,
    waiting: RefCell<Vec<Waker>>,
}

thread_local! {
    static NAMES: RefCell<HashMap<String, Name>> = RefCell::new(HashMap::new());
}

/// The addresses of `authority` (`host:port`; an IPv6 host in brackets): an IP without a
/// lookup; a name from what this core learnt in the last [`KNOWN_FOR`], or from the lookup
/// under way for it, or from a new one on the lookup threads, waited for `within` at most (the
/// lookup goes on, and its answer is kept for the next request).
pub async fn addresses(authority: &str, within: Duration) -> io::Result<Rc<[SocketAddr]>> {
    if let Ok(address) = authority.parse::<SocketAddr>() {
        return Ok(Rc::new([address]));
    }
    let lookup = NAMES.with(|names| {
        let mut names = names.borrow_mut();
        match names.get(authority) {
            Some(Name::Known { addresses, until }) if *until > Instant::now() => Ok(addresses.clone()),
            Some(Name::Looking(lookup)) => Err(lookup.clone()),
            _ => {
                let lookup = Rc::new(Lookup::default());
                names.insert(authority.to_owned(), Name::Looking(lookup.clone()));
                // A task of its own: the answer is kept even if every request waiting for it
                // gives up first.
                monoio::spawn(look_up(authority.to_owned(), lookup.clone()));
                Err(lookup)
            }
        }
    });
    let lookup = match lookup {
        Ok(known) => return Ok(known),
        Err(lookup) => lookup,
    };
    let answer = std::future::poll_fn(|cx| match &*lookup.answer.borrow() {
        Some(answer) => Poll::Ready(answer.clone().map_err(io::Error::other)),
        None => {
            let mut waiting = lookup.waiting.borrow_mut();
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        }
    });
    crate::io::timeout(within, answer).await.unwrap_or_else(|()| {
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer from the name servers within {within:?}")))
    })
}

/// Looks `name` up on the lookup threads, keeps the addresses for [`KNOWN_FOR`] (a failure is
/// not kept: the next request asks again) and wakes every request waiting for them.
async fn look_up(name: String, lookup: Rc<Lookup>) {
    let answer = if LOOKUPS.fetch_add(1, Ordering::Relaxed) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::Relaxed);
        Err(format!("{MAX_LOOKUPS} name lookups are already waiting for an answer"))
    } else {
        // The slot is given back when the lookup ends (or is dropped unrun).
        let slot = Slot;
        let asked = name.clone();
        let found = monoio::spawn_blocking(move || {
            let _slot = slot;
            asked.to_socket_addrs().map(Iterator::collect::<Vec<_>>)
        })
        .await;
        match found {
            Ok(Ok(found)) if !found.is_empty() => Ok(Rc::<[SocketAddr]>::from(found)),
            Ok(Ok(_)) => Err("the name has no address".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the name lookup was cancelled".to_owned()),
        }
    };
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        match &answer {
            Ok(addresses) => {
                let until = Instant::now() + KNOWN_FOR;
                names.insert(name, Name::Known { addresses: addresses.clone(), until });
            }
            Err(_) => {
                names.remove(&name);
            }
        }
        // Names not asked for again are not kept for good.
        names.retain(|_, n| !matches!(n, Name::Known { until, .. } if *until <= Instant::now()));
    });
    *lookup.answer.borrow_mut() = Some(answer);
    for waker in lookup.waiting.take() {
        waker.wake();
    }
}

/// A TCP connection to the first of `authority`'s addresses that accepts, the lookup and the
/// connections each within `within`.
pub async fn connect(authority: &str, within: Duration) -> io::Result<TcpStream> {
    connect_any(&addresses(authority, within).await?, within).await
}

/// The least share of the budget an address gets while more than that is left (Go's dialer
/// takes the same): a name with many addresses still gives each a fair chance to answer.
const LEAST_SHARE: Duration = Duration::from_secs(2);

/// A TCP connection to the first of `addresses` that accepts, all of them within `within`.
/// Each address gets an even share of what is left of it (at least [`LEAST_SHARE`]): one that
/// drops connection attempts (a host down behind a firewall) no longer takes the whole budget
/// from those after it. The error is the last address's, of kind [`io::ErrorKind::TimedOut`]
/// only when every address tried timed out.
pub async fn connect_any(addresses: &[SocketAddr], within: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + within;
    let (mut last, mut all_timed_out) = (None, true);
    for (tried, &address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let share = (left / (addresses.len() - tried) as u32).max(LEAST_SHARE).min(left);
        let failed = match crate::io::timeout(share, TcpStream::connect_addr(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                all_timed_out = false;
                e
            }
            Err(()) => io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {share:?}")),
        };
        // Which of a name's addresses failed how; an IP is its own address.
        last = Some(match addresses.len() {
            1 => failed,
            _ => io::Error::new(failed.kind(), format!("{address}: {failed}")),
        });
    }
    match last {
        Some(e) if all_timed_out == (e.kind() == io::ErrorKind::TimedOut) => Err(e),
        // The last timed out, an earlier one refused: the name is not silent.
        Some(e) => Err(io::Error::other(e.to_string())),
        None => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {within:?}"))),
    }
}
