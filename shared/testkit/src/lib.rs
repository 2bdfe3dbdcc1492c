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
pub mod mesos_driver;
pub mod mysql;
pub mod permission_service;
pub mod process;
pub mod zookeeper;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}
