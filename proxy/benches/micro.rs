//! Micro-benchmarks of the request path's pure stages (criterion). Run:
//! `cargo bench -p bcs-proxy --bench micro`. They print times; nothing asserts one.
use std::hint::black_box;

use bcs_proxy::http1::head::parse_request;
use bcs_proxy::route::route;
use bcs_proxy::tables::{digest, Tables};
use bcs_shared::snapshot::synthetic::{cluster_identifier, snapshot};
use bcs_shared::snapshot::wire::{encode, Decoder, Message};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const KUBECTL_GET: &[u8] = b"GET /tunnels/clusters/bcs-k8s-001-abcdefgh-0123456789abcdef/api/v1/namespaces/default/pods?limit=500 HTTP/1.1\r\n\
Host: gateway.example:8443\r\nUser-Agent: kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0\r\n\
Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json\r\n\
Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345\r\nKubectl-Command: kubectl get\r\n\
Kubectl-Session: 2b1c3b7e-0d0b-4b0e-9e6a-3c1b3a9f0c11\r\nAccept-Encoding: gzip\r\n\r\n";

fn heads(c: &mut Criterion) {
    c.bench_function("parse kubectl GET head", |b| b.iter(|| parse_request(black_box(KUBECTL_GET)).unwrap().unwrap()));
}

fn routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("route + cluster lookup");
    for n in [10, 1_000, 10_000] {
        let tables = Tables::compile(&snapshot(n, 10));
        let target = format!("/tunnels/clusters/{}/api/v1/pods?watch=1", cluster_identifier(n / 2));
        group.bench_with_input(BenchmarkId::from_parameter(n), &target, |b, target| {
            b.iter(|| match route(black_box(target)).unwrap() {
                bcs_proxy::route::Route::Kubernetes { identifier, .. } => tables.cluster(identifier).is_some(),
                _ => false,
            })
        });
    }
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let tables = Tables::compile(&snapshot(10, 1_000_000));
    c.bench_function("token lookup among 1 000 000 (SHA-256 + map)", |b| {
        b.iter(|| tables.token(&digest(black_box(b"token-123456"))).is_some())
    });
}

fn snapshots(c: &mut Criterion) {
    let big = snapshot(10_000, 1_000_000);
    let frame = encode(&Message::Snapshot(big.clone()));
    println!("snapshot with 10 000 clusters and 1 000 000 tokens: frame of {} MiB", frame.len() >> 20);
    let mut group = c.benchmark_group("snapshot 10k clusters, 1M tokens");
    group.sample_size(10);
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&Message::Snapshot(big.clone())))));
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut d = Decoder::default();
            d.push(black_box(&frame)).unwrap();
            d.next_message().unwrap().unwrap()
        })
    });
    group.bench_function("validate + compile", |b| {
        b.iter(|| {
            big.validate().unwrap();
            Tables::compile(black_box(&big))
        })
    });
    group.finish();
}

criterion_group!(benches, heads, routes, tokens, snapshots);
criterion_main!(benches);
