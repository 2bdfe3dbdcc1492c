//! Types shared by bcs-api's processes.
//!
//! - [`alloc`]: the global allocator (mimalloc, through `malloc` where that is aligned enough).
//! - [`config`]: the one YAML configuration file every binary reads (`bcs-api.yaml`).
//! - [`secret`]: the token type that never prints itself, random tokens, digests and
//!   constant-time comparison.
//! - [`identity`]: how internal user names become Kubernetes user names.
//! - [`logging`]: `tracing` set up from `log_config`, for every binary.
//! - [`sealer`]: AES-256-GCM encryption at rest under the key file.
//! - [`snapshot`]: what admin sends proxies, and the framed wire protocol it travels in.
//! - [`text`]: numbers as text without `format!`, for per-request paths.
//! - [`tls`]: trust anchors from PEM and client TLS settings.
pub mod alloc;
pub mod config;
pub mod identity;
pub mod logging;
pub mod sealer;
pub mod secret;
pub mod snapshot;
pub mod text;
pub mod tls;
