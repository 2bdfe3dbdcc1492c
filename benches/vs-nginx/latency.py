"""The vs-nginx benchmark's latency at equal load (`--scenarios latency`): each proxy gets the same fixed
request rate, open-loop, from target/release/bcs-loadgen (benches/loadgen), and the table compares the
latency each adds and the CPU each spends (Python 3 stdlib only).

Why: wrk is closed-loop. Each of its connections sends the next request when the last answer arrives, so
at saturation req/s is set by the busiest process on the load CPU (wrk and the origin share it on 2
cores), and p99 follows req/s: a round in which the origin got less CPU shows a longer tail for whichever
proxy it was measuring. Here the arrivals are fixed before the run (request k of connection c is due at
(k * connections + c) / rate seconds), the same for both proxies, at a rate below what either serves, so
p99 is what the proxy (and the kernel under it) adds. A request held up behind the previous one on its
connection counts from when it was due (wrk2's correction for coordinated omission).

The rate: --latency-rate, or by default 35 % of the lower of nginx-proxy's and nginx-proxy-tls' median
1 KiB req/s in this run's wrk matrix (8 000 req/s without the matrix), rounded down to 500: low enough that
the load CPU, which runs bcs-loadgen (its TLS client too) and the origin, keeps up on this 2-core machine.
The table says how busy the load CPU was; a round in which it was over 90 % busy measured the load side,
not the proxy, and is marked. 1 KiB GETs, 64 connections, interleaved rounds (configuration inside round),
the medians of each column.
"""
import json
import os
import subprocess
import time

import bench as b

CONFIGS = ["nginx-proxy", "bcs-proxy", "nginx-proxy-tls", "bcs-proxy-tls"]
WARMUP_SECS = 1.0
FALLBACK_RATE = 8000
SHARE_OF_NGINX = 0.35
LOAD_BOUND = 0.9  # a round whose load CPU was busier than this measured the load side (marked ‡)


def binary(root):
    return os.path.join(root, "target", "release", "bcs-loadgen")


def rate(bench):
    """The request rate every configuration gets, and how it was chosen."""
    a = bench.args
    if a.latency_rate:
        return a.latency_rate, "--latency-rate"
    medians = [b.med([r["rps"] for r in bench.runs[(c, "1k")]])
               for c in ("nginx-proxy", "nginx-proxy-tls") if bench.runs.get((c, "1k"))]
    if not medians:
        return FALLBACK_RATE, "no wrk matrix in this run: the fixed default"
    chosen = max(500, int(min(medians) * SHARE_OF_NGINX) // 500 * 500)
    return chosen, (f"{SHARE_OF_NGINX:.0%} of the lower of nginx-proxy's and nginx-proxy-tls' median 1 KiB req/s "
                    f"in this run's wrk matrix ({min(medians):,.0f})")


def cpu_times(cpus):
    """(busy, total) jiffies of these CPUs since boot, from /proc/stat."""
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [int(v) for v in fields[:8]]
                total += sum(values)
                busy += sum(values) - values[3] - values[4]  # idle, iowait
    return busy, total


def run_once(bench, config, req_rate, secs):
    url_of, _, gateway, token = bench.target(config)
    pids = bench.server_pids(config)
    argv = [binary(bench.args.root), "--url", url_of("1k"), "--rate", str(req_rate), "--connections",
            str(bench.args.connections), "--duration", str(secs), "--warmup", str(WARMUP_SECS),
            "--header", f"Authorization: Bearer {token}", "--ca", os.path.join(bench.dir, "ca.pem")]
    # The server's CPU over the measured part only: the warm-up is left out.
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    bench.procs.items.append(("bcs-loadgen", p, 2))
    try:
        time.sleep(0.2 + WARMUP_SECS)
        load_cpus = set(bench.load_cpus or range(os.cpu_count()))
        c0, l0 = b.cpu_ticks(pids), cpu_times(load_cpus)
        time.sleep(secs)
        c1, l1 = b.cpu_ticks(pids), cpu_times(load_cpus)
        out, err = p.communicate(timeout=secs + 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        bench.procs.items.remove(("bcs-loadgen", p, 2))
    if p.returncode != 0 or not out.strip():
        raise RuntimeError(f"bcs-loadgen against {config} failed ({p.returncode}): {err[-1000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["server_cpu"] = (c1 - c0) / b.CLK_TCK
    r["load_busy"] = (l1[0] - l0[0]) / max(l1[1] - l0[1], 1)
    r["first_error"] = err.strip().splitlines()[0] if err.strip() else ""
    return r


def measure(bench):
    a = bench.args
    req_rate, why = rate(bench)
    configs = [c for c in CONFIGS if c in a.configs]
    runs = {c: [] for c in configs}
    for rnd in range(1, a.rounds + 1):
        for config in configs:
            bench.wait_for_quiet()
            r = run_once(bench, config, req_rate, a.duration)
            runs[config].append(r)
            b.log(f"latency round {rnd} {config:<16} {req_rate:,} req/s offered, {r['achieved_rps']:,.0f} done  "
                  f"p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}  p99.9 {r['p999_ms']:.2f} ms  "
                  f"held up {r['held_up']}  errors {r['errors']}  server {r['server_cpu']:.2f} CPU-s  "
                  f"load CPU {r['load_busy']:.0%} busy")
    return {"rate": req_rate, "why": why, "runs": runs, "secs": a.duration}


def _cell(runs, key, fmt="{:.2f}"):
    return fmt.format(b.med([r[key] for r in runs]))


def table(bench):
    x = bench.extra["latency"]
    runs = x["runs"]
    rows = ["| configuration | offered req/s | done req/s | p50 ms | p90 ms | p99 ms | p99 of each round | p99.9 ms | "
            "max ms | held up | errors | load CPU busy | server CPU-s per 10 k req | ratio p99 | ratio CPU per req |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cpu = {c: b.med([r["server_cpu"] / max(r["completed"], 1) * 1e4 for r in rs]) for c, rs in runs.items()}
    p99 = {c: b.med([r["p99_ms"] for r in rs]) for c, rs in runs.items()}
    for c, rs in runs.items():
        base = "nginx-proxy-tls" if c.endswith("tls") else "nginx-proxy"
        ratio = lambda d: (f"{d[c] / d[base]:.2f}×" if base in d and d[base] else "–")
        rows.append(
            f"| {c} | {x['rate']:,} | {_cell(rs, 'achieved_rps', '{:,.0f}')} | {_cell(rs, 'p50_ms')} | "
            f"{_cell(rs, 'p90_ms')} | {_cell(rs, 'p99_ms')} | {', '.join('%.2f' % r['p99_ms'] + (' ‡' if r['load_busy'] > LOAD_BOUND else '') for r in rs)} | "
            f"{_cell(rs, 'p999_ms')} | {_cell(rs, 'max_ms')} | {sum(r['held_up'] for r in rs):,} | "
            f"{sum(r['errors'] + r['non_2xx'] for r in rs):,} | {_cell(rs, 'load_busy', '{:.0%}')} | {cpu[c]:.3f} | {ratio(p99)} | {ratio(cpu)} |")
    checks = []
    for c in ("bcs-proxy", "bcs-proxy-tls"):
        base = "nginx-proxy-tls" if c.endswith("tls") else "nginx-proxy"
        if c in p99 and base in p99:
            met = "met" if p99[c] <= p99[base] else "**missed**"
            wins = sum(rb["p99_ms"] <= rn["p99_ms"] for rb, rn in zip(runs[c], runs[base]))
            checks.append(f"{c}: p99 {p99[c]:.2f} / {p99[base]:.2f} ms, {met} (no higher than nginx's in "
                          f"{wins} of {len(runs[c])} rounds)")
    bound = sum(r["load_busy"] > LOAD_BOUND for rs in runs.values() for r in rs)
    return "\n".join(rows + ["", "Target p99 ≤ nginx's at the same load: " + "; ".join(checks) + ".",
                              "", f"Rounds whose load CPU was over {LOAD_BOUND:.0%} busy (‡, the load side was the "
                              f"bottleneck, not the proxy): {bound} of {sum(len(rs) for rs in runs.values())}."])
