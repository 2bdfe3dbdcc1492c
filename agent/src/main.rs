//! `bcs-kube-agent`: reports a cluster's apiserver addresses, CA and token to bcs-api
//! (see the library, [`bcs_agent`]).
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: bcs_shared::alloc::Mimalloc = bcs_shared::alloc::Mimalloc;

fn main() -> ExitCode {
    let args = bcs_agent::cli::Args::parse();
    init_logging(&args.log_format);
    let settings = match args.settings(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bcs-kube-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bcs-kube-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(bcs_agent::run(settings))
}

/// Logs to stderr only (as the original), text or JSON; `BCS_LOG` replaces the `info` filter.
fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BCS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}
