//! Times what bcs-api-proxy does with a snapshot frame from admin, stage by stage, on a made-up
//! snapshot of `--clusters` clusters and `--tokens` tokens: decode the frame, validate, compile
//! the lookup tables, install them (the same calls as `bcs_proxy::control`, without the socket
//! and without persisting, which happens after the tables serve). Then checks that a token and
//! a cluster are found in what was installed. Prints one JSON line (medians over `--rounds`),
//! with the RSS the installed tables keep once everything else is freed (`tables_mib`).
//!
//! `bcs-snapshot-apply [--clusters N] [--tokens N] [--rounds N]`; benches/vs-nginx/run runs it.
use std::time::Instant;

// The proxy's allocator (proxy/src/main.rs), so that allocation costs are the proxy's.
#[global_allocator]
static GLOBAL: bcs_shared::alloc::Mimalloc = bcs_shared::alloc::Mimalloc;

use bcs_proxy::tables::{self, digest, Tables};
use bcs_shared::snapshot::synthetic::{cluster_identifier, snapshot, token_value};
use bcs_shared::snapshot::wire::{encode, Decoder, Message};

struct Args {
    clusters: usize,
    tokens: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { clusters: 10_000, tokens: 1_000_000, rounds: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|_| format!("{flag} {value:?} is not a number"))?;
        match flag.as_str() {
            "--clusters" => args.clusters = n,
            "--tokens" => args.tokens = n,
            "--rounds" if n > 0 => args.rounds = n,
            _ => return Err(format!("unknown option {flag} (or a bad value); see the source's header")),
        }
    }
    Ok(args)
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|k| k.parse::<f64>().ok()).map_or(0.0, |k| k / 1024.0)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bcs-snapshot-apply: {e}");
        std::process::exit(2)
    });
    let base_mib = rss_mib();
    let made = snapshot(args.clusters, args.tokens);
    let started = Instant::now();
    let frame = encode(&Message::Snapshot(made));
    let encode_ms = millis(started);
    let (mut decode, mut validate, mut compile, mut install, mut total) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..args.rounds {
        let started = Instant::now();
        let mut decoder = Decoder::default();
        decoder.push(&frame).expect("a frame we encoded decodes");
        let Some(Message::Snapshot(snapshot)) = decoder.next_message().expect("decodes") else {
            panic!("the frame holds a snapshot")
        };
        decode.push(millis(started));
        let step = Instant::now();
        snapshot.validate().expect("a made-up snapshot is valid");
        validate.push(millis(step));
        let step = Instant::now();
        let compiled = Tables::compile(&snapshot);
        compile.push(millis(step));
        let step = Instant::now();
        tables::install(compiled);
        install.push(millis(step));
        total.push(millis(started));
        drop(snapshot);
    }
    let current = tables::current().expect("installed");
    let probe = args.tokens / 2;
    assert!(
        args.tokens == 0 || current.token(&digest(token_value(probe).as_bytes())).is_some(),
        "token {probe} is found"
    );
    assert!(args.clusters == 0 || current.cluster(&cluster_identifier(args.clusters / 2)).is_some(), "cluster found");
    let (frame_bytes, peak_mib) = (frame.len(), rss_mib());
    // What a proxy keeps between snapshots: only the installed tables. Everything else is
    // dropped and mimalloc is told to give the freed pages back before RSS is read again.
    drop((frame, current));
    // SAFETY: mi_collect only returns freed memory to the OS; no pointer is involved.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let tables_mib = rss_mib() - base_mib;
    println!(
        "{{\"clusters\":{},\"tokens\":{},\"frame_bytes\":{},\"rounds\":{},\"encode_ms\":{:.1},\"decode_ms\":{:.1},\
         \"validate_ms\":{:.1},\"compile_ms\":{:.1},\"install_ms\":{:.3},\"apply_ms\":{:.1},\"rss_mib\":{:.0},\
         \"tables_mib\":{:.0}}}",
        args.clusters,
        args.tokens,
        frame_bytes,
        args.rounds,
        encode_ms,
        median(decode),
        median(validate),
        median(compile),
        median(install),
        median(total),
        peak_mib,
        tables_mib
    );
}
