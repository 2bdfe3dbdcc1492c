//! Real handshakes, in memory: a rustls server (2 tickets after each handshake) and clients
//! whose configs hold the store under test.
use std::sync::Arc;
use std::time::Duration;

use bcs_testkit::apiserver::CertPair;
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, Connection, HandshakeKind, ServerConfig, ServerConnection};

use super::*;

struct Pair {
    server: Arc<ServerConfig>,
    certs: CertPair,
}

fn pair(names: &[&str]) -> Pair {
    let certs = CertPair::generate_for("tickets-ca", names);
    Pair { server: certs.server_config(), certs }
}

fn client(pair: &Pair, resumption: Resumption) -> Arc<ClientConfig> {
    let roots = bcs_shared::tls::roots_from_pem(pair.certs.ca_pem.as_bytes()).unwrap();
    let mut config = bcs_shared::tls::http1_client_config(roots);
    config.resumption = resumption;
    Arc::new(config)
}

fn store(limits: Limits, budget: &'static Budget) -> (Arc<TicketStore>, Resumption) {
    let store = Arc::new(TicketStore::new(limits, budget));
    (store.clone(), Resumption::store(store))
}

fn leaked_budget(tickets: usize) -> &'static Budget {
    Box::leak(Box::new(Budget::new(tickets)))
}

/// Starts a handshake: the client hello is built now, so a ticket (if any) is taken now.
fn start(config: &Arc<ClientConfig>, name: &str) -> ClientConnection {
    ClientConnection::new(config.clone(), name.to_string().try_into().unwrap()).unwrap()
}

/// Moves what `from` has to send into `to`; whether there was anything.
fn pump(from: &mut Connection, to: &mut Connection) -> bool {
    let mut moved = false;
    while from.wants_write() {
        let mut bytes = Vec::new();
        from.write_tls(&mut bytes).unwrap();
        to.read_tls(&mut bytes.as_slice()).unwrap();
        to.process_new_packets().unwrap();
        moved = true;
    }
    moved
}

/// Runs `client` against a new server connection until both have nothing more to send (the
/// tickets included); how the handshake went.
fn finish(client: ClientConnection, pair: &Pair) -> HandshakeKind {
    let mut client = Connection::Client(client);
    let mut server = Connection::Server(ServerConnection::new(pair.server.clone()).unwrap());
    while pump(&mut client, &mut server) | pump(&mut server, &mut client) {}
    assert!(!client.is_handshaking() && !server.is_handshaking());
    client.handshake_kind().unwrap()
}

fn resumed(kinds: &[HandshakeKind]) -> usize {
    kinds.iter().filter(|k| **k == HandshakeKind::Resumed).count()
}

/// `warm` handshakes one after the other, then `burst` started before any of them finishes.
fn warm_then_burst(
    pair: &Pair,
    config: &Arc<ClientConfig>,
    warm: usize,
    burst: usize,
) -> (Vec<HandshakeKind>, Vec<HandshakeKind>) {
    let warmed = (0..warm).map(|_| finish(start(config, "kubernetes"), pair)).collect();
    let started: Vec<ClientConnection> = (0..burst).map(|_| start(config, "kubernetes")).collect();
    (warmed, started.into_iter().map(|c| finish(c, pair)).collect())
}

#[test]
fn a_burst_of_new_connections_resumes_where_rustls_own_store_runs_out_at_eight() {
    let pair = pair(&["kubernetes"]);
    let budget = leaked_budget(1000);
    let (store, resumption) = store(LIMITS, budget);
    let ours = client(&pair, resumption);
    // The first is full and leaves 2 tickets; each resumed one takes 1 and leaves 2.
    let (warmed, burst) = warm_then_burst(&pair, &ours, 30, 30);
    assert_eq!(warmed[0], HandshakeKind::Full);
    assert_eq!(resumed(&warmed), 29);
    assert_eq!(resumed(&burst), 30, "31 tickets were there for 30 connections");
    assert_eq!(store.len(), 31 - 30 + 2 * 30);
    assert_eq!(budget.left(), 1000 - store.len(), "the budget counts what the store holds");
    let (_, drained) = warm_then_burst(&pair, &ours, 0, 61);
    assert_eq!(resumed(&drained), 61);
    let _taken: Vec<ClientConnection> = (0..store.len()).map(|_| start(&ours, "kubernetes")).collect();
    assert!(store.is_empty());
    assert!(store.room() <= 16, "an emptied store gives its burst's room back: {}", store.room());

    let theirs = client(&pair, Resumption::in_memory_sessions(256));
    let (_, burst) = warm_then_burst(&pair, &theirs, 30, 30);
    assert_eq!(resumed(&burst), 8, "rustls' store keeps 8 per server");
}

#[test]
fn a_server_keeps_at_most_its_share_and_its_newest_tickets() {
    let pair = pair(&["kubernetes"]);
    let budget = leaked_budget(1000);
    let (store, resumption) = store(Limits { per_server: 5, ..LIMITS }, budget);
    let config = client(&pair, resumption);
    let (_, burst) = warm_then_burst(&pair, &config, 10, 8);
    assert_eq!(store.len(), 5, "each handshake brought 2, the share is 5");
    assert_eq!(resumed(&burst), 5, "each ticket is handed out once");
    assert_eq!(budget.left(), 1000 - 5);
}

#[test]
fn all_stores_together_keep_no_more_than_the_budget_and_give_it_back_when_dropped() {
    let pair = pair(&["kubernetes"]);
    let budget = leaked_budget(3);
    let (first, resumption) = store(LIMITS, budget);
    let one = client(&pair, resumption);
    let (second, resumption) = store(LIMITS, budget);
    let two = client(&pair, resumption);
    for config in [&one, &two, &one, &two] {
        finish(start(config, "kubernetes"), &pair);
    }
    assert_eq!(first.len() + second.len(), 3);
    assert_eq!(budget.left(), 0);
    // A full budget still takes a server's newest ticket in place of its oldest.
    assert_eq!(second.len(), 1);
    assert_eq!(finish(start(&two, "kubernetes"), &pair), HandshakeKind::Resumed);
    assert_eq!(second.len(), 1, "a new ticket replaced the one taken's place, not more");
    assert_eq!(first.len() + second.len(), 3);
    drop(one);
    drop(first);
    assert_eq!(budget.left(), 3 - second.len(), "the dropped store's tickets went back to the budget");
}

#[test]
fn a_store_forgets_its_oldest_server_name_past_its_limit() {
    let pair = pair(&["a.example", "b.example", "c.example"]);
    let budget = leaked_budget(1000);
    let (store, resumption) = store(Limits { servers: 2, ..LIMITS }, budget);
    let config = client(&pair, resumption);
    for name in ["a.example", "b.example", "c.example"] {
        assert_eq!(finish(start(&config, name), &pair), HandshakeKind::Full);
    }
    assert_eq!(store.len(), 4, "two names of two tickets each");
    assert_eq!(budget.left(), 1000 - 4);
    assert_eq!(finish(start(&config, "a.example"), &pair), HandshakeKind::Full, "a's tickets were dropped");
    assert_eq!(finish(start(&config, "c.example"), &pair), HandshakeKind::Resumed);
}

#[test]
fn tickets_past_the_age_limit_are_not_offered() {
    let pair = pair(&["kubernetes"]);
    let budget = leaked_budget(1000);
    let (store, resumption) = store(Limits { max_age: Duration::ZERO, ..LIMITS }, budget);
    let config = client(&pair, resumption);
    for _ in 0..3 {
        assert_eq!(finish(start(&config, "kubernetes"), &pair), HandshakeKind::Full);
    }
    assert!(store.len() <= 2, "stale tickets are dropped as new ones come");
    assert_eq!(budget.left(), 1000 - store.len());
}
