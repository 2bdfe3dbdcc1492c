//! TLS 1.3 session tickets for upstream connections: enough of them that a burst of new
//! connections to one apiserver resumes instead of verifying its certificate chain again.
//!
//! rustls' own store keeps 8 tickets per server. Opening 256 watches at once, or every watch of
//! a cluster coming back after a restart, then makes mostly full handshakes (P-256 verification
//! and certificate parsing on the proxy's core, a signature on the apiserver): in the bench's
//! watch scenario, 4 374 of 9 868 upstream handshakes were full with rustls' store.
//!
//! Bounds, so a server that sends many tickets cannot grow the proxy: 256 tickets per
//! server name and 64 names per store ([`LIMITS`]), and a process-wide [`BUDGET`] of [`TOTAL`] tickets
//! over every store (a ticket with its share of the server's chain is about 1 KiB). When full,
//! a server's oldest ticket makes room for its newest. Each ticket is handed out once (TLS 1.3
//! tickets are single-use for a client), newest first, and none older than an hour
//! (an expired one would only cost a refused resumption and a full handshake).
//!
//! Key-exchange hints and TLS 1.2 sessions stay in rustls' small store.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::Tls13ClientSessionValue;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// How much one store keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tickets per server name (a cluster's apiservers all answer to `kubernetes`).
    pub per_server: usize,
    /// Server names: one in a cluster's store; the internal one reaches drivers by IP.
    pub servers: usize,
    /// A ticket older than this is not offered.
    pub max_age: Duration,
}

/// Every upstream store's limits.
pub const LIMITS: Limits = Limits { per_server: 256, servers: 64, max_age: Duration::from_secs(3600) };
/// Tickets kept over all stores of the process.
pub const TOTAL: usize = 8192;

/// How many more tickets the process may keep.
pub struct Budget(AtomicUsize);

impl Budget {
    pub const fn new(tickets: usize) -> Budget {
        Budget(AtomicUsize::new(tickets))
    }

    fn take_one(&self) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    }

    fn give_back(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn left(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

pub static BUDGET: Budget = Budget::new(TOTAL);

struct Server {
    name: ServerName<'static>,
    /// Oldest first.
    tickets: VecDeque<(Instant, Tls13ClientSessionValue)>,
}

/// A [`ClientSessionStore`] with room for bursts (module header).
pub struct TicketStore {
    small: ClientSessionMemoryCache,
    servers: Mutex<Vec<Server>>,
    limits: Limits,
    budget: &'static Budget,
}

impl TicketStore {
    pub fn new(limits: Limits, budget: &'static Budget) -> TicketStore {
        // rustls' cache is sized in tickets, 8 per server name.
        let small = ClientSessionMemoryCache::new(limits.servers.saturating_mul(8));
        TicketStore { small, servers: Mutex::new(Vec::new()), limits, budget }
    }

    /// Tickets held now.
    pub fn len(&self) -> usize {
        self.servers.lock().unwrap().iter().map(|s| s.tickets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tickets the store has room for without growing.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.servers.lock().unwrap().iter().map(|s| s.tickets.capacity()).sum()
    }
}

impl std::fmt::Debug for TicketStore {
    // Tickets are secrets: only their count.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketStore").field("tickets", &self.len()).finish()
    }
}

/// The resumption settings of every upstream TLS config: this store, session tickets on.
pub fn resumption() -> Resumption {
    Resumption::store(Arc::new(TicketStore::new(LIMITS, &BUDGET)))
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.small.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.small.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.small.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.small.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.small.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut servers = self.servers.lock().unwrap();
        let at = match servers.iter().position(|s| s.name == server_name) {
            Some(at) => at,
            None => {
                if servers.len() == self.limits.servers {
                    let gone = servers.remove(0);
                    self.budget.give_back(gone.tickets.len());
                }
                servers.push(Server { name: server_name, tickets: VecDeque::new() });
                servers.len() - 1
            }
        };
        let tickets = &mut servers[at].tickets;
        let now = Instant::now();
        while tickets.front().is_some_and(|(since, _)| now.duration_since(*since) >= self.limits.max_age) {
            tickets.pop_front();
            self.budget.give_back(1);
        }
        // Room: from the budget, else this server's oldest ticket (none: the ticket is dropped).
        let room = tickets.len() < self.limits.per_server && self.budget.take_one();
        if !room && tickets.pop_front().is_none() {
            return;
        }
        tickets.push_back((now, value));
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let mut servers = self.servers.lock().unwrap();
        let server = servers.iter_mut().find(|s| &s.name == server_name)?;
        let tickets = &mut server.tickets;
        let (since, ticket) = tickets.pop_back()?;
        self.budget.give_back(1);
        let fresh = since.elapsed() < self.limits.max_age;
        if !fresh {
            // The newest is too old, so are the rest.
            self.budget.give_back(tickets.len());
            tickets.clear();
        }
        // A burst's room goes back once it is mostly empty: the budget counts tickets, not room.
        if tickets.capacity() > 16 && tickets.len() * 4 < tickets.capacity() {
            tickets.shrink_to(tickets.len() * 2);
        }
        fresh.then_some(ticket)
    }
}

impl Drop for TicketStore {
    fn drop(&mut self) {
        let held = self.servers.get_mut().map_or(0, |s| s.iter().map(|s| s.tickets.len()).sum());
        self.budget.give_back(held);
    }
}

#[cfg(test)]
mod tests;
