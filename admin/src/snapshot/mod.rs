//! Admin's side of the snapshot protocol (DESIGN §6): build a [`bcs_shared::snapshot::Snapshot`]
//! from the store, keep the current one, and push it to every proxy connected to the unix
//! socket.
//!
//! | stage | module |
//! |---|---|
//! | store rows -> snapshot | [`builder`] |
//! | current snapshot, when to rebuild, revisions | [`publisher`] |
//! | the socket, connected proxies | [`server`] |
//! | one proxy's conversation | [`peer`] |
//!
//! A REST write reaches the proxies like this: the handler commits, calls
//! [`publisher::Publisher::changed`], the rebuild task reads the store in one transaction and
//! publishes the new snapshot, and every connection task sends it.
pub mod builder;
pub mod peer;
pub mod publisher;
pub mod server;

pub use publisher::Publisher;
pub use server::SnapshotServer;
