//! The graceful stop. On SIGTERM (bcs-api stops or restarts its proxy so) the proxy stops
//! accepting, answers `/readyz` 503, lets the requests in flight finish within a grace period,
//! closes each kept-alive connection as its request ends, and exits. Requests that run until
//! the client leaves (watches, `logs -f`, exec/attach/port-forward) are not waited for: they
//! never end by themselves, and their clients reconnect.
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
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
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
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
