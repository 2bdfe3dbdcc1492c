//! `bcs-api-proxy`: the data plane. Not built yet (issue 3): this binary says so and exits
//! non-zero, so nothing mistakes it for a working proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    eprintln!("bcs-api-proxy: not implemented in this build yet (issue 3)");
    std::process::ExitCode::from(70)
}
