//! `bcs-kube-agent`: reports a cluster's apiserver addresses, CA and token to bcs-api.
//! Not built yet (issue 4): this binary says so and exits non-zero, so nothing mistakes it for
//! a working agent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    eprintln!("bcs-kube-agent: not implemented in this build yet (issue 4)");
    std::process::ExitCode::from(70)
}
