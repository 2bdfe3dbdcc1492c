//! The graceful stop. On SIGTERM (bcs-api stops or restarts its proxy so) the proxy stops
//! accepting, answers `/readyz` 503, ends the connections waiting for a request, lets the
//! requests in flight (and the heads that have begun to arrive) finish within a grace period,
//! closes each kept-alive connection as its request ends, and exits. Requests that run until the client leaves (watches, `logs -f`,
//! exec/attach/port-forward) are not waited for: they never end by themselves, and their
//! clients reconnect.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http1::head::RequestHead;

static DRAINING: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// The client listeners of every core, shut down to stop accepting.
static LISTENERS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// A client listener to shut when the drain starts.
pub fn add_listener(fd: RawFd) {
    LISTENERS.lock().expect("never poisoned").push(fd);
}

/// A request the drain waits for, until it is dropped.
pub struct InFlight(());

impl InFlight {
    /// None for a request that runs until its client leaves.
    pub fn start(head: &RequestHead) -> Option<InFlight> {
        if runs_until_the_client_leaves(head) {
            return None;
        }
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(()))
    }

    /// A request whose head has begun to arrive and is not whole yet: the drain waits for the
    /// rest (its read is not among the [`Waiting`] ones, which the drain ends), then for the
    /// request itself if [`InFlight::start`] counts it.
    pub fn arriving() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection waiting for its next request, from the time it is between requests to the time
/// its read returns. The drain shuts the read side of each one whose socket holds nothing
/// (`shutdown(SHUT_RD)`): its read ends, the connection closes, and its client sees the end
/// before it sends another request on it, rather than a reset at exit. One whose socket holds
/// bytes is left to read them and answer (with `Connection: close`); one whose head's first
/// bytes were read before the sweep is no longer waiting but [`InFlight::arriving`].
pub struct Waiting(RawFd);

impl Waiting {
    /// None when the drain has begun and nothing came: the connection should end now. (Entered
    /// first, checked second: the drain sets the flag first and sweeps second, so one of the two
    /// sees the other.)
    pub fn begin(fd: RawFd) -> Option<Waiting> {
        WAITING.with(|w| w.lock().expect("never poisoned").insert(fd));
        let waiting = Waiting(fd);
        if draining() && !holds_bytes(fd) {
            return None;
        }
        Some(waiting)
    }
}

/// Whether bytes wait in the socket's receive queue (a peek, which takes none).
fn holds_bytes(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv(2) into one byte of our own, on a descriptor its caller holds open.
    let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n > 0
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Removed before the connection can close the descriptor, so the drain never shuts a
        // number reused by another socket.
        let _ = WAITING.try_with(|w| w.lock().expect("never poisoned").remove(self.0));
    }
}

thread_local! {
    /// This core's waiting connections; locked by the drain's thread only once, at the stop.
    static WAITING: Arc<Mutex<FdSet>> = new_core_set();
}

/// Every core's set of waiting connections.
static CORES: Mutex<Vec<Arc<Mutex<FdSet>>>> = Mutex::new(Vec::new());

fn new_core_set() -> Arc<Mutex<FdSet>> {
    let set = Arc::new(Mutex::new(FdSet::default()));
    CORES.lock().expect("never poisoned").push(set.clone());
    set
}

/// Descriptors as bits: descriptors are small numbers, and a request sets and clears one bit.
#[derive(Default)]
struct FdSet(Vec<u64>);

impl FdSet {
    fn insert(&mut self, fd: RawFd) {
        // A negative number is never a connection's descriptor.
        let Ok(fd) = usize::try_from(fd) else { return };
        if fd / 64 >= self.0.len() {
            self.0.resize(fd / 64 + 1, 0);
        }
        self.0[fd / 64] |= 1 << (fd % 64);
    }

    fn remove(&mut self, fd: RawFd) {
        let Ok(fd) = usize::try_from(fd) else { return };
        if let Some(word) = self.0.get_mut(fd / 64) {
            *word &= !(1 << (fd % 64));
        }
    }

    fn iter(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.0.iter().enumerate().flat_map(|(word, &bits)| {
            (0..64).filter(move |bit| bits & (1u64 << bit) != 0).map(move |bit| (word * 64 + bit) as RawFd)
        })
    }
}

/// Shuts the read side of every waiting connection with nothing in its socket (see
/// [`Waiting`]). Returns how many.
fn end_waiting() -> usize {
    let mut ended = 0;
    for core in CORES.lock().expect("never poisoned").iter() {
        let set = core.lock().expect("never poisoned");
        // The descriptors are open: a connection takes its descriptor out of the set (under
        // this lock) before it can close it.
        for fd in set.iter().filter(|&fd| !holds_bytes(fd)) {
            // SAFETY: shutdown(2) on an open descriptor of a connection.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            ended += 1;
        }
    }
    ended
}

/// An upgrade, or a Kubernetes GET that streams: a watch (`watch` set to anything Kubernetes
/// reads as true, or the old `/watch/` path after an API version) or a followed log. Runs for
/// every request: memchr and prefixes, no list, no char-by-char search.
pub fn runs_until_the_client_leaves(head: &RequestHead) -> bool {
    if head.upgrade.is_some() {
        return true;
    }
    if head.method != "GET" {
        return false;
    }
    let Some(tunnelled) = head.target.strip_prefix(crate::route::TUNNEL_PREFIX) else { return false };
    let end = memchr::memchr(b'?', tunnelled.as_bytes()).unwrap_or(tunnelled.len());
    let (path, query) = (&tunnelled[..end], tunnelled.get(end + 1..).unwrap_or(""));
    // `<identifier>/api/v1/<resource>...` or `<identifier>/apis/<group>/<version>/<resource>...`.
    let Some(slash) = memchr::memchr(b'/', path.as_bytes()) else { return false };
    let api = &path[slash + 1..];
    let resource = if let Some(after) = api.strip_prefix("api/") {
        segment(after, 1)
    } else if let Some(after) = api.strip_prefix("apis/") {
        segment(after, 2)
    } else {
        return false;
    };
    // Kubernetes reads a query flag as true unless it is "0" or "false" (any case).
    let asks = |name: &str| {
        !query.is_empty()
            && query.split('&').any(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                key == name && value != "0" && !value.eq_ignore_ascii_case("false")
            })
    };
    resource == Some("watch") || asks("watch") || (path.ends_with("/log") && asks("follow"))
}

/// The `n`th (from 0) `/`-separated segment of `path`.
fn segment(path: &str, n: usize) -> Option<&str> {
    let mut rest = path;
    for _ in 0..n {
        rest = &rest[memchr::memchr(b'/', rest.as_bytes())? + 1..];
    }
    Some(&rest[..memchr::memchr(b'/', rest.as_bytes()).unwrap_or(rest.len())])
}

/// Stops accepting and waits until no request is in flight, or `grace` has passed. Returns how
/// many were still in flight.
pub fn drain(grace: Duration) -> usize {
    DRAINING.store(true, Ordering::SeqCst);
    for &fd in LISTENERS.lock().expect("never poisoned").iter() {
        // SAFETY: shutdown(2) on a listener's descriptor, which stays open: its accept loop,
        // woken by the error this causes, sees the drain and never closes it. New connections
        // are refused from here on.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    let ended = end_waiting();
    tracing::debug!(connections = ended, "ended the connections waiting for a request");
    let deadline = Instant::now() + grace;
    // Nothing in flight twice in a row, 50 ms apart: a request whose head was arriving on a
    // kept-alive connection when the drain began is counted by then.
    let mut quiet = 0;
    loop {
        let left = IN_FLIGHT.load(Ordering::SeqCst);
        quiet = if left == 0 { quiet + 1 } else { 0 };
        if quiet == 2 || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(if left == 0 { 50 } else { 10 }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::parse_request;

    fn head(request: &str) -> RequestHead {
        let request = request.replacen("\r\n", "\r\nHost: g\r\n", 1);
        parse_request(request.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn the_waiting_set_holds_each_descriptor_once_and_lets_it_go() {
        let mut set = FdSet::default();
        for fd in [0, 63, 64, 1000, 5, -1] {
            set.insert(fd);
        }
        set.insert(64);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 5, 63, 64, 1000]);
        for fd in [63, 1000, 7, 100_000, -1] {
            set.remove(fd);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 5, 64]);
    }

    #[test]
    fn watches_follows_and_upgrades_are_not_waited_for() {
        for long in [
            "GET /tunnels/clusters/c/api/v1/pods?watch=true HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/pods?labelSelector=a&watch=1 HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/pods?watch HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/apis/apps/v1/deployments?watch=True HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/watch/pods HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/apis/apps/v1/watch/namespaces/d/deployments HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/namespaces/d/pods/p/log?follow=true HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/namespaces/d/pods/p/exec?command=sh HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(runs_until_the_client_leaves(&head(long)), "{long}");
        }
        for short in [
            "GET /tunnels/clusters/c/api/v1/pods HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/pods?watch=false HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/pods?watch=0 HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/pods?nowatch=true HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/namespaces/watch/configmaps HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/namespaces/d/pods/p/log HTTP/1.1\r\n\r\n",
            "GET /tunnels/clusters/c/api/v1/namespaces/d/pods?follow=true HTTP/1.1\r\n\r\n",
            "POST /tunnels/clusters/c/api/v1/namespaces/d/configmaps?watch=true HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /rest/clusters?watch=true HTTP/1.1\r\n\r\n",
            "GET /bcsapi/v4/scheduler/mesos/apps?follow=1 HTTP/1.1\r\n\r\n",
        ] {
            assert!(!runs_until_the_client_leaves(&head(short)), "{short}");
        }
    }
}
