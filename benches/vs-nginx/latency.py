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
import threading
import time

import bench as b

CONFIGS = ["nginx-proxy", "bcs-proxy", "nginx-proxy-tls", "bcs-proxy-tls"]
WARMUP_SECS = 0.5
ROUNDS = 3  # --latency-rounds
SECS = 2.0  # --latency-secs
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
    """One loadgen run; the server's CPU, the load CPUs' busy share and the CPU used outside the
    benchmark are read at the loadgen's own marks (stderr) for the start and end of its measured
    seconds, so the warm-up is left out."""
    url_of, _, _, token = bench.target(config)
    pids = bench.server_pids(config)
    argv = [binary(bench.args.root), "--url", url_of("1k"), "--rate", str(req_rate), "--connections",
            str(bench.args.connections), "--duration", str(secs), "--warmup", str(WARMUP_SECS),
            "--header", f"Authorization: Bearer {token}", "--ca", os.path.join(bench.dir, "ca.pem")]
    load_cpus = set(bench.load_cpus or range(os.cpu_count()))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    bench.procs.items.append(("bcs-loadgen", p, 2))
    # The loadgen gives up on a request after 5 s, so it ends by itself; this is the backstop.
    watchdog = threading.Timer(secs + WARMUP_SECS + 40, p.kill)
    watchdog.start()
    marks, errors = {}, []
    try:
        ours = bench.our_pids() | {p.pid}
        for line in p.stderr:
            line = line.rstrip("\n")
            if line in ("bcs-loadgen: measuring", "bcs-loadgen: measured"):
                marks[line.rsplit(" ", 1)[1]] = (b.cpu_ticks(pids), cpu_times(load_cpus), b.cpu_snapshot())
            elif line:
                errors.append(line)
        out = p.stdout.read()
        p.wait(timeout=30)
    finally:
        watchdog.cancel()
        if p.poll() is None:
            p.kill()
            p.communicate()
        bench.procs.items.remove(("bcs-loadgen", p, 2))
    if p.returncode != 0 or not out.strip() or len(marks) != 2:
        raise RuntimeError(f"bcs-loadgen against {config} failed ({p.returncode}): {' / '.join(errors)[-1000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    (c0, l0, s0), (c1, l1, s1) = marks["measuring"], marks["measured"]
    r["server_cpu"] = (c1 - c0) / b.CLK_TCK
    r["load_busy"] = (l1[0] - l0[0]) / max(l1[1] - l0[1], 1)
    r["noise_cpu"], r["noise_who"] = b.noise(s0, s1, ours)
    r["first_error"] = errors[0] if errors else ""
    return r


def invalid(bench, r):
    """Why a run does not measure the proxy, or None: failed requests (a refusal is fast and would
    shorten the tail), fewer answers than were due, a load CPU that could not keep up, or CPU
    used outside the benchmark."""
    if r["errors"] or r["non_2xx"]:
        return "failed requests"
    if r["completed"] < 0.99 * r["rate"] * r["duration_s"]:
        return "fewer answers than were due"
    if bench.load_cpus and r["load_busy"] > LOAD_BOUND:
        return "load CPU busy"
    if r["noise_cpu"] > bench.args.noise_limit * r["duration_s"]:
        return "disturbed"
    return None


def measure(bench):
    a = bench.args
    req_rate, why = rate(bench)
    configs = [c for c in CONFIGS if c in a.configs]
    runs = {c: [] for c in configs}
    for rnd in range(1, a.latency_rounds + 1):
        for config in configs:
            for attempt in range(1, a.tries + 1):
                bench.wait_for_quiet()
                r = run_once(bench, config, req_rate, a.latency_secs)
                r["invalid"] = invalid(bench, r)
                if r["noise_cpu"] <= a.noise_limit * r["duration_s"]:
                    bench.last_clean = time.monotonic()  # the next run's quiet second, as in the wrk matrix
                if r["invalid"] != "disturbed" or attempt == a.tries or not bench.patient():
                    break
                bench.spend_patience(a.latency_secs + WARMUP_SECS)
                b.log(f"    disturbed: {r['noise_cpu']:.2f} CPU-s outside the benchmark ({r['noise_who']}); again")
            runs[config].append(r)
            b.log(f"latency round {rnd} {config:<16} {req_rate:,} req/s offered, {r['achieved_rps']:,.0f} done  "
                  f"p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}  p99.9 {r['p999_ms']:.2f} ms  "
                  f"held up {r['held_up']}  errors {r['errors'] + r['non_2xx']}  server {r['server_cpu']:.2f} CPU-s  "
                  f"load CPU {r['load_busy']:.0%} busy" + (f"  (not counted: {r['invalid']})" if r["invalid"] else "")
                  + (f"  first failure: {r['first_error']}" if r["first_error"] else ""))
    return {"rate": req_rate, "why": why, "runs": runs, "secs": a.latency_secs}


def p99_verdict(ours, theirs, nginx_rounds):
    """The p99 target, judged on the medians over clean rounds: met when no higher than nginx's; a
    tie when higher but within the range nginx's own rounds spanned (the two cannot be told apart
    at this run's precision); missed only above all of nginx's rounds."""
    if ours <= theirs:
        return "met"
    if ours <= max(nginx_rounds):
        return f"tie (above nginx's median, within its rounds' {min(nginx_rounds):.2f}–{max(nginx_rounds):.2f} ms)"
    return "**missed**"


def verdicts(bench):
    """{bcs configuration: (figures, verdict, detail)} for the p99 target, from the rounds in which both
    proxies were measured cleanly (two such rounds at least), paired by round number."""
    runs = bench.extra["latency"]["runs"]
    out = {}
    for c in ("bcs-proxy", "bcs-proxy-tls"):
        base = "nginx-proxy-tls" if c.endswith("tls") else "nginx-proxy"
        if c not in runs or base not in runs:
            continue
        pairs = [(rb, rn) for rb, rn in zip(runs[c], runs[base]) if not rb["invalid"] and not rn["invalid"]]
        if len(pairs) < 2:
            out[c] = ("–", "inconclusive", f"{len(pairs)} round(s) in which both proxies were measured cleanly")
            continue
        ours, theirs = b.med([rb["p99_ms"] for rb, _ in pairs]), b.med([rn["p99_ms"] for _, rn in pairs])
        wins = sum(rb["p99_ms"] <= rn["p99_ms"] for rb, rn in pairs)
        out[c] = (f"p99 {ours:.2f} / {theirs:.2f} ms", p99_verdict(ours, theirs, [rn["p99_ms"] for _, rn in pairs]),
                  f"no higher than nginx's in {wins} of {len(pairs)} clean rounds")
    return out


def _med(runs, key):
    return b.med([r[key] for r in runs])


def table(bench):
    """The table and the verdict. Columns are medians over the rounds that measured the proxy (all
    rounds, marked, when none did); the verdict compares each bcs round with nginx's round of the
    same number, both valid, and needs two such pairs."""
    x = bench.extra["latency"]
    runs = x["runs"]
    rows = ["| configuration | offered req/s | done req/s | p50 ms | p90 ms | p99 ms | p99 of each round | p99.9 ms | "
            "max ms | held up | failed | load CPU busy | server CPU-s per 10 k req | ratio p99 | ratio CPU per req |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    counted = {c: [r for r in rs if not r["invalid"]] or rs for c, rs in runs.items()}
    cpu = {c: b.med([r["server_cpu"] / max(r["completed"], 1) * 1e4 for r in rs]) for c, rs in counted.items()}
    p99 = {c: _med(rs, "p99_ms") for c, rs in counted.items()}
    for c, rs in runs.items():
        base = "nginx-proxy-tls" if c.endswith("tls") else "nginx-proxy"
        ratio = lambda d: (f"{d[c] / d[base]:.2f}×" if base in d and d[base] else "–")
        k = counted[c]
        rows.append(
            f"| {c} | {x['rate']:,} | {_med(k, 'achieved_rps'):,.0f} | {_med(k, 'p50_ms'):.2f} | "
            f"{_med(k, 'p90_ms'):.2f} | {p99[c]:.2f}{'' if any(not r['invalid'] for r in rs) else ' ‡'} | "
            f"{', '.join('%.2f' % r['p99_ms'] + (' ‡' if r['invalid'] else '') for r in rs)} | "
            f"{_med(k, 'p999_ms'):.2f} | {_med(k, 'max_ms'):.2f} | {sum(r['held_up'] for r in rs):,} | "
            f"{sum(r['errors'] + r['non_2xx'] for r in rs):,} | {_med(rs, 'load_busy'):.0%} | {cpu[c]:.3f} | "
            f"{ratio(p99)} | {ratio(cpu)} |")
    checks = [f"{c}: " + (f"{figures}, {verdict} ({detail})" if figures != "–" else f"{verdict} ({detail})")
              for c, (figures, verdict, detail) in verdicts(bench).items()]
    reasons = {}
    for rs in runs.values():
        for r in rs:
            if r["invalid"]:
                reasons[r["invalid"]] = reasons.get(r["invalid"], 0) + 1
    total = sum(len(rs) for rs in runs.values())
    return "\n".join(rows + [
        "", "Target p99 ≤ nginx's at the same load: " + "; ".join(checks) + ".", "",
        f"Rounds not counted (‡): {sum(reasons.values())} of {total}"
        + (" (" + ", ".join(f"{n} {why}" for why, n in reasons.items()) + ")" if reasons else "")
        + f". A round is not counted when a request failed or got no 2xx, fewer answers came than were due, the "
        f"load CPU was over {LOAD_BOUND:.0%} busy (the load side was the bottleneck, not the proxy), or more than "
        f"{bench.args.noise_limit:.2f} CPU-s per second went to processes outside the benchmark (tried again first)."])
