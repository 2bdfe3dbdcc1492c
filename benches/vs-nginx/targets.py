"""Issue 6's targets, judged in one table at the top of the report (a reading aid, never an exit
status). Each figure is the one its own section shows; the two throughput targets also say in how
many rounds the target held when each gateway round is set against nginx's round of the same
number, run seconds apart: on a noisy machine a miss by the medians can be one round's drift, and
a target met in every round is met beyond that drift."""
import bench as b
import latency
import scenarios

PER_CPU_1K = 1.3
RPS_1M = 1.0


def _paired(bench, config, base, key, field):
    """The ratios of `field` between `config` and `base`, round by round."""
    def value(r):
        if field == "rpcpu":
            return r["requests"] / r["server_cpu"] if r["server_cpu"] else float("nan")
        return r[field]
    by_round = {r["round"]: value(r) for r in bench.runs.get((base, key), [])}
    out = []
    for r in bench.runs.get((config, key), []):
        theirs = by_round.get(r["round"])
        ours = value(r)
        if theirs and theirs == theirs and ours == ours:
            out.append(ours / theirs)
    return out


def _throughput(bench, rows, key, field, aim, label):
    lines = []
    for config in ("bcs-proxy", "bcs-proxy-tls"):
        base = b.baseline(config)
        if (config, key) not in rows or (base, key) not in rows or not rows[(base, key)][field]:
            continue
        value = rows[(config, key)][field] / rows[(base, key)][field]
        rounds = _paired(bench, config, base, key, field)
        held = sum(r >= aim for r in rounds)
        spread = f"{min(rounds):.2f}–{max(rounds):.2f}×" if rounds else "–"
        verdict = "met" if value >= aim else "**missed**"
        lines.append(f"| {label}, {'TLS' if config.endswith('tls') else 'plain'} | ≥ {aim:.1f}× | {value:.2f}× | "
                     f"{verdict} | in {held} of {len(rounds)} rounds (round by round {spread}) |")
    return lines


def table(bench, rows):
    out = ["| target (issue 6) | aim | this run | verdict | detail |", "|---|---|---|---|---|"]
    if "1k" in bench.args.sizes:
        out += _throughput(bench, rows, "1k", "rpcpu", PER_CPU_1K, "1 KiB requests per proxy CPU-second / nginx's")
    if "latency" in bench.extra:
        for config, (figures, verdict, detail) in latency.verdicts(bench).items():
            out.append(f"| 1 KiB p99 at the same fixed rate, bcs / nginx, {'TLS' if config.endswith('tls') else 'plain'} | "
                       f"≤ nginx's | {figures.removeprefix('p99 ')} | {verdict} | {detail} |")
    if "1m" in bench.args.sizes:
        out += _throughput(bench, rows, "1m", "rps", RPS_1M, "1 MiB req/s / nginx's")
    if "watch" in bench.extra:
        kib = bench.extra["watch"]["bcs-proxy"]["per_stream"]
        ok = kib <= scenarios.STREAM_TARGET_KIB
        out.append(f"| proxy RSS per idle watch stream | ≤ {scenarios.STREAM_TARGET_KIB:.0f} KiB | {kib:.1f} KiB | "
                   f"{'met' if ok else '**missed**'} | {bench.extra['watch']['bcs-proxy']['open']:,} streams |")
    if "propagation" in bench.extra:
        r = bench.extra["propagation"]
        for step, label in (("create", "created → first 200"), ("revoke", "revoked → first 401")):
            p99 = scenarios.pct(r[step], 99) if not r["timeouts"][step] else float("inf")
            ok = p99 <= scenarios.PROPAGATION_TARGET_MS
            out.append(f"| snapshot propagation p99, token {label} | ≤ {scenarios.PROPAGATION_TARGET_MS:.0f} ms | "
                       f"{p99:.1f} ms | {'met' if ok else '**missed**'} | {len(r[step])} samples, "
                       f"{r['timeouts'][step]} timeouts |")
    if "apply" in bench.extra:
        ms = bench.extra["apply"]["apply_ms"]
        out.append(f"| snapshot apply, 10 000 clusters and 1 000 000 tokens | ≤ 1 000 ms | {ms:.0f} ms | "
                   f"{'met' if ms <= 1000 else '**missed**'} | median of {bench.extra['apply']['rounds']} rounds |")
    return "\n".join(out)
