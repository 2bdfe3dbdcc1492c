//! Test kit for bcs-api's end-to-end tests: everything here stands in for what cannot run in
//! a test (or drives what can), never for the product itself.
//!
//! - [`apiserver`]: a fake kube-apiserver that the real kubectl accepts, recording what it
//!   receives, with faults to switch on.
//! - [`process`]: runs a real binary with its output captured, waits for it to be ready,
//!   stops it on drop.
//! - [`mysql`]: a fresh database on the real MariaDB per test, dropped afterwards.
//! - [`permission_service`]: a fake permission service speaking the RBAC subscription protocol.
//! - [`forward`]: a TCP forwarder that can cut every connection, to take a dependency "down".
//! - [`zookeeper`]: a real ZooKeeper server (Debian's package) on a free port, to stop and kill.
//! - [`mesos_driver`]: a fake mesos-driver that registers in ZooKeeper as the real one does.
//! - [`free_port`]: a loopback port nobody listens on.
pub mod apiserver;
pub mod forward;
pub mod limits;
pub mod mesos_driver;
pub mod mysql;
pub mod permission_service;
pub mod process;
pub mod zookeeper;

/// A loopback port that was free a moment ago, for a process a test starts to listen on.
///
/// Not from the kernel's ephemeral range: a port found there with `bind(0)` and released could be
/// handed to the next `bind(0)` (a fake server in a test running alongside) or `connect()` before
/// the child binds it, and the test would then talk to the wrong server. Below that range each
/// test process walks its own sequence from a random start, so its tests never get the same
/// port twice and two test processes rarely meet. Falls back to `bind(0)` when the range leaves
/// no room below it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const LOWEST: u32 = 10_000;
    static RANGE: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let range = RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let ephemeral_low: u32 = text.split_whitespace().next()?.parse().ok()?;
        let span = ephemeral_low.checked_sub(LOWEST).filter(|&s| s >= 1_000)?;
        NEXT.store(rand::random_range(0..span), Ordering::Relaxed);
        Some((LOWEST, span))
    });
    if let Some((lowest, span)) = *range {
        for _ in 0..span {
            let port = (lowest + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let ports: Vec<u16> = (0..500).map(|_| super::free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        if low > 11_000 {
            assert!(ports.iter().all(|&p| p < low), "a port in the kernel's ephemeral range (from {low})");
        }
        for port in ports {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port can be bound");
        }
    }
}
