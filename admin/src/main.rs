//! `bcs-api --config=bcs-api.yaml`: the control plane.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: bcs_shared::alloc::Mimalloc = bcs_shared::alloc::Mimalloc;

#[derive(Parser)]
#[command(name = "bcs-api", version, about = "bcs-api: multi-cluster Kubernetes and Mesos API gateway (control plane)")]
struct Args {
    /// The configuration file (the original's bcs-api.yaml format; see deploy/bcs-api.yaml).
    #[arg(long, short = 'f', visible_alias = "file", default_value = "bcs-api.yaml")]
    config: PathBuf,
    /// Log format: text or json (overrides log_config.log_format).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match bcs_shared::config::Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bcs-api: {e}");
            return ExitCode::from(2);
        }
    };
    let _guard = match bcs_shared::logging::init(&config, args.log_format.as_deref(), "bcs-api.log") {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("bcs-api: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(bcs_admin::server::run(config, &args.config, args.log_format.as_deref())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bcs-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}
