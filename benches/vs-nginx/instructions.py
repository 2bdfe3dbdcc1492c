"""The vs-nginx benchmark's instruction count (`--scenarios instructions`): the user-space instructions
each proxy executes per 1 KiB GET, counted by valgrind's callgrind (Python 3 stdlib only).

Why: on a shared 2-vCPU machine the CPU-seconds of the wrk matrix swing by 15 % and more between runs
of the same binary, which hides any change to the request path smaller than that. An instruction count
does not swing: the same binary serving the same requests gives the same count to within about 1.5 %, so
one run measures a change. What it cannot see: the kernel (system calls, TCP, io_uring, about 60 % of
either proxy's CPU on this path), cache misses and how many instructions a cycle retires. The wrk matrix
keeps measuring those.

How: a second bcs-api-proxy (the gateway's configuration on other ports: same admin, same snapshot,
same driver and log settings) and a second nginx-proxy (proxy.conf's plain server, `master_process off`)
each run under `valgrind --tool=callgrind` on the server CPUs. wrk sends 1 KiB GETs over 16 kept-alive
connections for 1 s (not counted: pools filled, code paged in); `callgrind_control -z` zeroes the
counters; wrk runs again; `callgrind_control -d` dumps them; the dump's total over the requests wrk
completed is the figure. Under callgrind each proxy runs about 50 times slower, so it, not wrk, sets the
pace. Both see the CPU valgrind emulates: AES-NI, but no SHA extensions, so the SHA-256 of each bearer
token (the gateway's lookup key) costs about 3 500 instructions here and a tenth of that on the machine.
"""
import collections
import os
import re
import shutil
import subprocess

import bench as b

CONNECTIONS = 16
WARM_SECS = 1
TOP = 10


def available():
    return bool(shutil.which("valgrind") and shutil.which("callgrind_control"))


def self_costs(path):
    """Self cost (instructions) per function from a callgrind dump, the calls' inclusive lines left out."""
    names, costs = {}, collections.Counter()
    current, skip_next = None, False
    with open(path, errors="replace") as f:
        for line in f:
            if skip_next:
                skip_next = False
                continue
            if line.startswith(("fn=", "cfn=")):
                # A function is named at its first mention, which may be as a callee.
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("fn="):
                    current = m.group(1)
            elif line.startswith("calls="):
                skip_next = True  # the next line is the call's inclusive cost
            elif current is not None and line[:1] in "0123456789+-*":
                parts = line.split()
                if len(parts) >= 2:
                    costs[current] += int(parts[1])
    return {names.get(k, k): v for k, v in costs.items()}


def total(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def count(bench, name, argv, url, token, ready, secs, cwd, env=None):
    """Starts `argv` under callgrind, waits until `ready()`, counts `secs` of wrk: a result dict."""
    out = os.path.join(bench.dir, f"callgrind.{name}.out")
    log_path = os.path.join(bench.dir, f"callgrind.{name}.log")
    p = bench.procs.start(f"{name} under callgrind",
                          bench.pinned_argv(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]),
                          grace=10, cwd=cwd, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    try:
        b.wait_until(f"{name} under callgrind", ready, 120, p)
        wrk = ["wrk", "-t1", f"-c{CONNECTIONS}", "--latency", "-H", f"Authorization: Bearer {token}", url]
        subprocess.run(wrk[:1] + [f"-d{WARM_SECS}s"] + wrk[1:], capture_output=True, timeout=WARM_SECS + 60)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60, check=True)
        r = b.parse_wrk(subprocess.run(wrk[:1] + [f"-d{secs}s"] + wrk[1:], capture_output=True, text=True,
                                       timeout=secs + 60).stdout)
        # callgrind_control returns once the dump is written: callgrind.<name>.out.1.
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=60, check=True)
        dump = out + ".1"
        b.wait_until(f"{name}'s callgrind dump", lambda: os.path.exists(dump), 60)
    finally:
        bench.procs.stop(p)
    if not r["requests"] or r["errors"]:
        raise RuntimeError(f"{name} under callgrind: {r['requests']} requests, {r['errors']} errors")
    instructions = total(dump)
    top = sorted(self_costs(dump).items(), key=lambda kv: -kv[1])[:TOP]
    result = {"requests": r["requests"], "instructions": instructions,
              "per_request": instructions / r["requests"],
              "top": [(fn, cost / r["requests"]) for fn, cost in top]}
    b.log(f"callgrind {name}: {result['per_request']:,.0f} user-space instructions per request "
          f"({r['requests']:,} requests)")
    return result


def measure(bench, secs=2):
    """User-space instructions per 1 KiB GET of bcs-api-proxy and of nginx-proxy, each counted alone."""
    a, g = bench.args, bench.main
    bin_dir = os.path.join(a.root, "target", "release")
    plain, tls, metric = b.free_ports(3)
    config = os.path.join(g.dir, "bcs-api-callgrind.yaml")
    with open(os.path.join(g.dir, "bcs-api.yaml")) as f:
        text = f.read()
    text = re.sub(r"(?m)^  insecure_port: \d+$", f"  insecure_port: {plain}", text)
    text = re.sub(r"(?m)^  port: \d+$", f"  port: {tls}", text, count=1)
    text = re.sub(r"(?m)^  metric_port: \d+$", f"  metric_port: {metric}", text)
    with open(config, "w") as f:
        f.write(text)
    env = {k: v for k, v in os.environ.items() if k not in ("BCS_LOG", "BCS_PROXY_DRIVER")}
    env.update(g.env)
    path = f"/tunnels/clusters/{g.identifier}/1k"
    results = {"bcs-proxy": count(
        bench, "bcs-api-proxy", [os.path.join(bin_dir, "bcs-api-proxy"), f"--config={config}"],
        f"http://127.0.0.1:{plain}{path}", g.user_token,
        lambda: b.http_get(plain, path, token=g.user_token)[0] == 200, secs, g.dir, env)}

    # nginx-proxy's plain server alone, one process, its own pid file, logs and temp paths.
    port = b.free_ports(1)[0]
    with open(os.path.join(bench.dir, "proxy.conf")) as f:
        conf = f.read()
    conf = conf.split("    server {\n        listen 127.0.0.1:" + str(bench.nginx_tls_port))[0].rstrip() + "\n}\n"
    conf = conf.replace(f"listen 127.0.0.1:{bench.nginx_port} ", f"listen 127.0.0.1:{port} ")
    conf = conf.replace("pid proxy.pid;", "pid proxy-callgrind.pid;").replace("logs/proxy.err", "logs/callgrind.err")
    conf = re.sub(r"tmp/(\w\w)2", r"tmp/\g<1>9", conf)
    with open(os.path.join(bench.dir, "proxy-callgrind.conf"), "w") as f:
        f.write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    results["nginx-proxy"] = count(
        bench, "nginx-proxy", [nginx, "-p", bench.dir + "/", "-c", "proxy-callgrind.conf", "-e", "logs/callgrind.err",
                               "-g", "daemon off; master_process off;"],
        f"http://127.0.0.1:{port}/1k", g.user_token, lambda: b.http_get(port, "/1k")[0] == 200, secs, bench.dir)
    return results


def table(bench):
    x = bench.extra["instructions"]
    nginx = x["nginx-proxy"]["per_request"]
    rows = ["| configuration | requests counted | user-space instructions per request | ratio to nginx-proxy |",
            "|---|---:|---:|---:|"]
    for name in ("nginx-proxy", "bcs-proxy"):
        r = x[name]
        rows.append(f"| {name} | {r['requests']:,} | {r['per_request']:,.0f} | {r['per_request'] / nginx:.2f}× |")
    rows += ["", "Where bcs-api-proxy's instructions go (self cost per request, the top "
             f"{TOP} functions):", "", "| function | instructions per request |", "|---|---:|"]
    for fn, cost in x["bcs-proxy"]["top"]:
        rows.append(f"| `{fn[:100].replace('|', '/')}` | {cost:,.0f} |")
    return "\n".join(rows)
