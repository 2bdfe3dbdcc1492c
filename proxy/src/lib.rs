//! bcs-api-proxy: the data plane.
//!
//! The life of a request, one module per stage (see proxy/README.md for the phase chart):
//!
//! | stage | module |
//! |---|---|
//! | runtimes and listeners (TLS, plain, metrics) | [`listen`], [`health`] |
//! | TLS on both legs | [`tls`] |
//! | one client connection, request by request | [`conn`] |
//! | request and response heads, body framing | [`http1`] |
//! | which route | [`route`], [`allow`] |
//! | who is calling | [`auth`] over [`tables`] |
//! | an upgrade into a pod or node: may the user create it? | [`guard`] |
//! | what goes upstream, what comes back | [`rewrite`] |
//! | connecting and pooling | [`upstream`], [`io`], [`tickets`] |
//! | the exchange, streaming and upgrades | [`forward`], [`streams`] |
//! | when a large body's reads wake | [`low_water`] |
//! | an error becomes a status | [`error`], [`respond`] |
//! | snapshots from admin | [`control`] |
pub mod allow;
pub mod auth;
pub mod conn;
pub mod control;
pub mod drain;
pub mod error;
pub mod forward;
pub mod fuzzing;
pub mod guard;
pub mod health;
pub mod http1;
pub mod io;
pub mod listen;
pub mod low_water;
pub mod metrics;
pub mod resolve;
pub mod respond;
pub mod rewrite;
pub mod route;
pub mod streams;
pub mod tables;
pub mod tickets;
pub mod tls;
pub mod upstream;
