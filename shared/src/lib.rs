//! Types shared by bcs-api's processes.
//!
//! - [`config`]: the one YAML configuration file every binary reads (`bcs-api.yaml`).
//! - [`secret`]: the token type that never prints itself, random tokens, digests and
//!   constant-time comparison.
//! - [`identity`]: how internal user names become Kubernetes user names.
pub mod config;
pub mod identity;
pub mod secret;
