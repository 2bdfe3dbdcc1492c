#!/usr/bin/env python3
"""bcs-api-proxy next to nginx, proxying the same origin, measured in one run (Python 3 stdlib only).

Started by `benches/vs-nginx/run`, which installs nginx and wrk if missing and builds the release
binaries first; see benches/README.md. In a fresh temp dir it starts:

  origin            nginx (1 worker) serving /1k, /64k, /1m            (perf.md section 4)
  nginx-proxy(-tls) nginx (2 workers) reverse proxy to the origin       (perf.md section 4)
  bcs-proxy(-tls)   bcs-api on the embedded SQLite store, which starts target/release/bcs-api-proxy;
                    one cluster whose apiserver address is the origin, seeded through the REST API

and runs `wrk -t1 -c64 -d<secs> --latency` against each configuration and size, interleaved
(round -> size -> configuration), recording req/s, p50, p99, errors and the CPU seconds of the
server under test (utime+stime from /proc). CPU used by processes outside the benchmark during a
run is measured too; a run disturbed by more than --noise-limit is tried again (up to --tries, and
within --patience seconds of waiting and trying again for the whole run).

With nproc >= 2 the server under test (bcs-api-proxy, all its threads; nginx-proxy's master and
workers) is pinned with taskset to its own core(s), and wrk, the origin, bcs-api and this script to the
others (--no-pin turns that off). Besides the throughput matrix it measures, in the same run
(--scenarios): a new connection per request (wrk with `Connection: close`, 1 KiB, interleaved with the
matrix), how long a REST change takes to reach the proxy (scenarios.py: propagation), and the memory
of 10 000 idle watch streams held through each proxy (scenarios.py: watch, watch_holder.py), and the
user-space instructions each proxy executes per 1 KiB GET under valgrind's callgrind (instructions.py),
a figure that, unlike CPU-seconds on a shared machine, does not swing from run to run.

It prints the tables and writes them as markdown to results/latest.md. It never fails on a
figure: it is a measurement, not a test. Everything it starts is stopped on exit.
"""
import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import instructions
import latency
import mesos
import scenarios
import targets

SIZES = {"1k": 1024, "64k": 65536, "1m": 1048576}
CONFIGS = ["direct-origin", "nginx-proxy", "bcs-proxy", "nginx-proxy-tls", "bcs-proxy-tls"]
SCENARIOS = ["throughput", "close", "mesos", "latency", "propagation", "apply", "watch", "instructions"]
DEFAULT_DURATION = 1
# More short rounds rather than fewer long ones: this machine's speed drifts between rounds more than
# within one (benches/README.md), so rounds of 1 s. Three of them, not four: on the AMD EPYC the release
# build alone takes 5.5-6.5 minutes, and the fourth round's 27 s put a fresh clone's run over issue 6's
# 10 minutes. The latency scenario keeps its own rounds and length (latency.py).
DEFAULT_ROUNDS = 3
# Waiting for quiet and repeating disturbed runs took 20-70 s of a run on that AMD EPYC, whose
# hypervisor steals CPU in bursts (benches/README.md); past this allowance a disturbed run is kept and
# marked, so the run's length has a bound.
DEFAULT_PATIENCE = 30
# The close scenario's workload: 1 KiB, a new connection per request (its key in Bench.runs).
CLOSE = "close-1k"
MESOS = "mesos-1k"
MESOS_CLUSTER = "BCS-MESOS-10001"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- /proc accounting

def proc_stat(pid):
    """(comm, ppid, starttime, utime+stime, cutime+cstime, utime, stime) in ticks, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lpar, rpar = data.index("("), data.rindex(")")
    comm = data[lpar + 1:rpar]
    fields = data[rpar + 2:].split()
    # fields[0] is state (field 3); utime is field 14 -> fields[11].
    return (comm, int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]), int(fields[11]), int(fields[12]))


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(pid):
    return [p for p in all_pids() if (s := proc_stat(p)) and s[1] == pid]


def cpu_ticks(pids):
    return sum(s[3] for p in pids if (s := proc_stat(p)))


def user_system_ticks(pids):
    """(utime, stime) summed over pids: the server's own code against the kernel's work for it (TCP,
    system calls, io_uring), which /proc keeps apart. Their sum is cpu_ticks(pids), from the same
    read."""
    stats = [s for p in pids if (s := proc_stat(p))]
    return sum(s[5] for s in stats), sum(s[6] for s in stats)


def tcp_segments_sent():
    """The machine's TCP OutSegs (/proc/net/snmp): every segment on loopback, data and pure ACKs."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])


def task_files(pid, name):
    """The text of /proc/<pid>/task/<tid>/<name> for each thread still there (none if the process is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}", "rb") as f:
                yield f.read().decode("utf-8", "replace")
        except OSError:
            continue


def thread_ticks(pid):
    """utime+stime by thread name for one process."""
    out = {}
    for data in task_files(pid, "stat"):
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out


def cpu_snapshot():
    """The machine's busy ticks (user+nice+system from /proc/stat), the ticks the hypervisor took
    from its CPUs (steal: a virtual CPU that waited for the host), and every process's own ticks:
    {(pid, starttime): (comm, utime+stime, is_kernel_thread)}."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    busy = int(fields[1]) + int(fields[2]) + int(fields[3])
    steal = int(fields[8]) if len(fields) > 8 else 0
    procs = {}
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                kthread = not f.read(1)  # kernel thread (or zombie)
        except OSError:
            continue
        s = proc_stat(pid)
        if s:
            procs[(pid, s[2])] = (s[0], s[3], kthread)
    return busy, steal, procs


def noise(before, after, ours, reaped_ticks=0):
    """CPU seconds used outside the benchmark between two snapshots, and by whom: userland processes
    not in `ours` that are alive at the end, plus what processes that exited in between used (the
    machine's busy time that no living process accounts for, less `reaped_ticks`, our own reaped wrk),
    plus the CPU time the hypervisor stole (a stolen tick slows whichever process it hit, as an
    outside process would). Kernel threads (softirq work for our sockets) are not counted."""
    (busy0, steal0, procs0), (busy1, steal1, procs1) = before, after
    live, outside, who = 0, 0, {}
    for key, (comm, ticks, kthread) in procs1.items():
        used = ticks - procs0.get(key, (comm, 0, kthread))[1]
        live += used
        if used > 0 and not kthread and key[0] not in ours:
            outside += used
            who[comm] = who.get(comm, 0) + used
    exited = max(0, busy1 - busy0 - live - reaped_ticks)
    if exited > 2:  # sampling slack
        outside += exited
        who["(exited processes)"] = exited
    if steal1 > steal0:
        outside += steal1 - steal0
        who["(hypervisor steal)"] = steal1 - steal0
    top = sorted(who.items(), key=lambda kv: -kv[1])[:3]
    return outside / CLK_TCK, ", ".join(f"{c} {t / CLK_TCK:.1f}" for c, t in top)


# ---------------------------------------------------------------- CPU pinning

def cpu_list(cpus):
    """taskset's notation of a CPU set: 0,2-3."""
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def parse_cpu_list(text):
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus |= set(range(int(lo), int(hi or lo) + 1))
    return cpus


def cpu_plan(args):
    """(server CPUs, load CPUs) as sorted lists: the server under test on the upper half of the CPUs
    this script may use (on 2 cores: CPU 1, or --server-cpus), wrk, the origins, bcs-api and this script
    on the others; (None, None) with --no-pin or fewer than 2 CPUs."""
    avail = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(avail) < 2:
        return None, None
    if args.server_cpus:
        server = sorted(parse_cpu_list(args.server_cpus))
    else:
        server = avail[len(avail) - len(avail) // 2:]
    return server, [c for c in avail if c not in server]


def pin(pid, cpus):
    """Every thread of `pid` onto `cpus` (`taskset -a -p -c`); False if the process is gone or it failed.
    Threads started later inherit the mask of the thread that starts them."""
    try:
        r = subprocess.run(["taskset", "-a", "-p", "-c", cpu_list(cpus), str(pid)], capture_output=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def thread_affinity(pid):
    """The distinct Cpus_allowed_list values of a process's threads, e.g. {'1'}."""
    found = (re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M) for text in task_files(pid, "status"))
    return {m.group(1) for m in found if m}


def raise_fd_limit(want=65536):
    """RLIMIT_NOFILE up to `want` (soft and hard; root may raise the hard limit), before anything is
    started, so nginx, bcs-api and bcs-api-proxy inherit it: 10 000 watch streams take a client and an
    upstream descriptor each. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new in ((max(want, soft), max(want, hard)), (min(max(want, soft), hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- processes

class Procs:
    """Every process this run started, stopped in reverse order on exit."""

    def __init__(self):
        self.items = []  # (name, Popen, grace seconds)

    def start(self, name, argv, grace=5, **kw):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.items.append((name, p, grace))
        return p

    def stop_all(self):
        for name, p, grace in reversed(self.items):
            self._stop(name, p, grace)
        self.items.clear()

    def stop(self, proc):
        """Stops one process started here (before the end of the run)."""
        for item in [i for i in self.items if i[1] is proc]:
            self._stop(*item)
            self.items.remove(item)

    @staticmethod
    def _stop(name, p, grace):
        if p.poll() is not None:
            return
        extra = []
        if name == "bcs-api":
            # bcs-api stops its proxy on SIGTERM; remember the proxy in case it has to be killed.
            extra = [c for c in children(p.pid) if (s := proc_stat(c)) and s[0].startswith("bcs-api-proxy")]
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {p.pid}) did not stop within {grace}s: SIGKILL")
            p.kill()
            p.wait()
        for pid in extra:
            if proc_stat(pid):
                os.kill(pid, signal.SIGKILL)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_until(what, check, timeout, alive=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with status {alive.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready within {timeout}s")


def http_get(port, path, tls=False, token=None, headers=None):
    """(status, body) of one GET on loopback."""
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        conn.request("GET", path, headers=sent)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- set-up

ORIGIN_CONF = """worker_processes 1;
pid upstream.pid;
error_log logs/upstream.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    open_file_cache max=100 inactive=60s; open_file_cache_valid 60s;
    default_type application/json;
    client_body_temp_path tmp/cb; proxy_temp_path tmp/px;
    fastcgi_temp_path tmp/fc; uwsgi_temp_path tmp/uw; scgi_temp_path tmp/sc;
    server {
        listen 127.0.0.1:@ORIGIN@ reuseport backlog=4096;
        location = /1k { return 200 '@J1K@'; }
        # The mesos workload: the origin is also the (plain http) mesos-driver.
        location = /mesosdriver/v4/1k { return 200 '@J1K@'; }
        location / { root www; }
    }
    # Not in perf.md: the same origin over TLS, used when the upstream leg is https (--upstream).
    server {
        listen 127.0.0.1:@ORIGIN_TLS@ ssl reuseport backlog=4096;
        ssl_certificate     cert.pem;
        ssl_certificate_key key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location = /1k { return 200 '@J1K@'; }
        # Which TLS version the caller's leg negotiated (the set-up reads it through each proxy).
        location = /tls-protocol { return 200 '$ssl_protocol'; }
        location / { root www; }
    }
}
"""

PROXY_CONF = """worker_processes @WORKERS@;
pid proxy.pid;
error_log logs/proxy.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    client_body_temp_path tmp/cb2; proxy_temp_path tmp/px2;
    fastcgi_temp_path tmp/fc2; uwsgi_temp_path tmp/uw2; scgi_temp_path tmp/sc2;
    upstream backend {
        server 127.0.0.1:@UPSTREAM_PORT@;
        keepalive 128;              # idle keep-alive connections per worker
        keepalive_requests 1000000;
    }
    upstream mesosdriver {          # the mesos workload: a plain http driver, as bcs-api-proxy's
        server 127.0.0.1:@ORIGIN@;
        keepalive 128;
        keepalive_requests 1000000;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_buffering on;
    proxy_buffer_size 16k;
    proxy_buffers 8 64k;
    proxy_busy_buffers_size 128k;
    proxy_max_temp_file_size 0;     # never spool responses to disk
@UPSTREAM_TLS@    server {
        listen 127.0.0.1:@NGINX@ reuseport backlog=4096;
        location / { proxy_pass @UPSTREAM_SCHEME@://backend; }
        location /mesosdriver/ { proxy_pass http://mesosdriver; }
    }
    server {
        listen 127.0.0.1:@NGINX_TLS@ ssl reuseport backlog=4096;
        ssl_certificate     cert.pem;
        ssl_certificate_key key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location / { proxy_pass @UPSTREAM_SCHEME@://backend; }
        location /mesosdriver/ { proxy_pass http://mesosdriver; }
    }
}
"""

BCS_CONF = """# Generated by benches/vs-nginx/bench.py.
service_config:
  address: 127.0.0.1
  port: @BCS_TLS@
  insecure_address: 127.0.0.1
  insecure_port: @BCS@
metric_config:
  metric_port: @BCS_METRIC@
local_config:
  local_ip: 127.0.0.1
cert_config:
  server_cert_file: @DIR@/cert.pem
  server_key_file: @DIR@/key.pem
log_config:
  logtostderr: true
  v: 0
core_database:
  dsn: ""
zk_config:
  bcs_zookeeper: "@ZK@"
bootstrap_users:
  - name: "admin"
    is_super_user: true
    tokens:
      - ""
admin_config:
  address: 127.0.0.1
  port: @ADMIN@
  snapshot_socket: @STATE@/run/bcs-api.sock
  spawn_proxy: true
proxy_config:
  cores: @CORES@
storage:
  data_dir: @STATE@/data
"""


UPSTREAM_TLS_CONF = """    # The upstream leg is https (see --upstream): verified as bcs-api-proxy does (cluster CA, name kubernetes).
    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate ca.pem;
    proxy_ssl_name kubernetes;
    proxy_ssl_server_name on;
    proxy_ssl_session_reuse on;
    # nginx before 1.23.4 offers at most TLS 1.2 upstream by default; bcs-api-proxy speaks TLS 1.3.
    proxy_ssl_protocols TLSv1.2 TLSv1.3;
"""


def make_certificates(d):
    """ca.pem (a throw-away CA, the cluster's cacert_data) and cert.pem/key.pem signed by it, ECDSA P-256,
    for localhost, 127.0.0.1 and `kubernetes` (the name bcs-api-proxy checks on an apiserver)."""
    def run(*argv):
        subprocess.run(["openssl", *argv], cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=bench-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,DNS:kubernetes,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "cert.pem", "-days", "30", "-extfile", "leaf.ext")
    for key in ("key.pem", "ca.key"):
        os.chmod(os.path.join(d, key), 0o600)


def fill(template, values):
    for k, v in values.items():
        template = template.replace(f"@{k}@", str(v))
    return template


# Extra gateways started next to the main one (--variants), each measured as `bcs-proxy-<name>` on
# its plain port: the same binaries with one setting changed, so design choices are compared in one run.
VARIANTS = {
    "epoll": {"BCS_PROXY_DRIVER": "legacy"},
    "nolog": {"BCS_LOG": "info,rustls=error,bcs_proxy::access=off"},
    "epoll-nolog": {"BCS_PROXY_DRIVER": "legacy", "BCS_LOG": "info,rustls=error,bcs_proxy::access=off"},
}


class Gateway:
    """One bcs-api (embedded SQLite) with the bcs-api-proxy it starts, in <dir>/bcs[-name]/, seeded with
    one user and one cluster whose apiserver is the origin."""

    def __init__(self, bench, name, env):
        self.bench, self.name, self.env = bench, name, env
        self.dir = os.path.join(bench.dir, "bcs" + (f"-{name}" if name else ""))
        self.plain_port, self.tls_port, self.metric_port, self.admin_port = free_ports(4)
        self.api = None
        self.identifier = self.user_token = self.admin_token = self.user_id = None
        self.driver = "?"
        self.upstream_scheme = self.upstream_refusal = None
        self.pinned_pid = None  # the bcs-api-proxy pid last seen (and pinned to the server CPUs)

    def start(self):
        a, b = self.bench.args, self.bench
        os.makedirs(self.dir)
        config = os.path.join(self.dir, "bcs-api.yaml")
        with open(config, "w") as f:
            f.write(fill(BCS_CONF, {"BCS": self.plain_port, "BCS_TLS": self.tls_port, "BCS_METRIC": self.metric_port,
                                    "ADMIN": self.admin_port, "DIR": b.dir, "STATE": self.dir, "CORES": a.cores,
                                    "ZK": f"127.0.0.1:{b.zk_port}" if b.zk_port else ""}))
        bin_dir = os.path.join(a.root, "target", "release")
        env = {k: v for k, v in os.environ.items() if k not in ("BCS_LOG", "BCS_PROXY_DRIVER")}
        # bcs-api looks for bcs-api-proxy next to itself; name it explicitly all the same.
        env["BCS_API_PROXY_BIN"] = os.path.join(bin_dir, "bcs-api-proxy")
        env.update(self.env)
        self.out = os.path.join(self.dir, "bcs-api.stdout")
        self.err = os.path.join(self.dir, "bcs-api.stderr")
        self.api = b.procs.start(
            "bcs-api", [os.path.join(bin_dir, "bcs-api"), f"--config={config}"], grace=15, cwd=self.dir,
            env=env, stdout=open(self.out, "wb"), stderr=open(self.err, "wb"))
        token = {}

        def bootstrap_token():
            m = re.search(r"bootstrap user admin has the token (\S+)", open(self.out).read())
            if m:
                token["admin"] = m.group(1)
            return bool(m)

        wait_until("bcs-api bootstrap token", bootstrap_token, 60, self.api)
        self.admin_token = token["admin"]
        wait_until("bcs-api /healthz", lambda: self.curl("GET", "/healthz")[0] == 200, 30, self.api)
        self.seed()

    def curl(self, method, path, token=None, body=None):
        """One REST call to admin with curl: (status, parsed JSON or text)."""
        argv = ["curl", "-sS", "--max-time", "10", "-X", method, f"http://127.0.0.1:{self.admin_port}{path}",
                "-w", "\n%{http_code}"]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        r = subprocess.run(argv, input=json.dumps(body).encode() if body is not None else None,
                           capture_output=True, timeout=20)
        text, _, code = r.stdout.decode().rpartition("\n")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return int(code or 0), parsed

    def rest(self, method, path, token=None, body=None):
        status, parsed = self.curl(method, path, token, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {parsed}")
        return parsed

    def seed(self):
        """The README's seed flow: user, its token, a cluster, its register token, credentials."""
        b, admin = self.bench, self.admin_token
        self.rest("POST", "/rest/users/", admin, {"user_name": "bench"})
        self.user_id = user_id = self.rest("GET", "/rest/users/bench", admin)["ID"]
        self.user_token = self.rest("POST", f"/rest/users/{user_id}/tokens", admin)["Value"]
        schemes = {"auto": ["http", "https"], "http": ["http"], "https": ["https"]}[b.args.upstream]
        self.identifier, self.upstream_scheme = self.add_cluster(
            "bench-001", {"http": b.origin_port, "https": b.origin_tls_port}, schemes)
        path = f"/tunnels/clusters/{self.identifier}/1k"
        wait_until("bcs-api-proxy serving the cluster",
                   lambda: http_get(self.plain_port, path, token=self.user_token)[0] == 200, 30, self.api)
        wait_until("bcs-api-proxy TLS", lambda: http_get(self.tls_port, path, True, self.user_token)[0] == 200,
                   10, self.api)
        with open(self.err, errors="replace") as f:
            m = re.search(r'starting the proxy runtimes.*driver="([^"]+)"', f.read())
        self.driver = m.group(1) if m else "?"

    def add_cluster(self, source_id, ports, schemes):
        """A cluster created by the bench user, its register token and its credentials, whose apiserver is
        127.0.0.1:ports[scheme] for the first of `schemes` admin accepts: (identifier, scheme)."""
        b = self.bench
        cluster = self.rest("POST", "/rest/clusters/bcs", self.user_token, {"id": source_id, "project_id": "bench"})
        cluster_id, identifier = cluster["id"], cluster["identifier"]
        register = self.rest("POST", f"/rest/clusters/{cluster_id}/register_tokens", self.user_token)[0]["token"]
        for scheme in schemes:
            status, answer = self.curl("PUT", f"/rest/clusters/{cluster_id}/credentials", None, {
                "register_token": register,
                "server_addresses": f"{scheme}://127.0.0.1:{ports[scheme]}",
                "cacert_data": open(os.path.join(b.dir, "ca.pem")).read(),
                "user_token": "bench-dummy-cluster-token",
            })
            if status == 200:
                return identifier, scheme
            self.upstream_refusal = answer.get("message", answer) if isinstance(answer, dict) else answer
            if not self.name:
                log(f"PUT credentials with {scheme}:// refused: {status} {self.upstream_refusal}")
        raise RuntimeError("admin refused every upstream address (see --upstream)")

    def proxy_pid(self):
        """The pid of the bcs-api-proxy bcs-api started: its child named so, else its only child (a
        wrapper script in place of the binary execs something of another name)."""
        kids = [(c, s[0]) for c in children(self.api.pid) if (s := proc_stat(c))]
        named = [c for c, comm in kids if comm.startswith("bcs-api-proxy")]
        if named or len(kids) == 1:
            return (named or [kids[0][0]])[0]
        raise RuntimeError(f"bcs-api-proxy is not running under bcs-api {self.name}")

    def url(self, tls, size):
        port = self.tls_port if tls else self.plain_port
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}/tunnels/clusters/{self.identifier}/{size}"


class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.dir = None
        self.gateways = {}
        self.origin = self.nginx = self.zk = None
        self.zk_port = None
        self.server_cpus, self.load_cpus = cpu_plan(args)
        self.repins = 0
        self.last_clean = None  # when the last measurement that came out clean ended
        self.patience_spent = 0.0  # seconds of waiting for quiet and of runs tried again (--patience)
        self.extra = {}  # results of the propagation and watch scenarios
        self.upstream_protocols = {}  # proxy -> the TLS version its upstream leg negotiated
        self.timings = {}  # seconds spent per phase, for the report

    @property
    def main(self):
        return self.gateways[""]

    # -- CPU pinning

    def pinned_argv(self, argv):
        """`argv` started on the server CPUs (taskset execs it: the pid is the program's own)."""
        return ["taskset", "-c", cpu_list(self.server_cpus), *argv] if self.server_cpus else argv

    def proxy_pid(self, gateway):
        """The gateway's bcs-api-proxy pid, every thread of it pinned to the server CPUs. bcs-api restarts a
        dead proxy, which then inherits bcs-api's (load) CPUs: a new pid is pinned again."""
        deadline = time.monotonic() + 30
        while True:
            try:
                pid = gateway.proxy_pid()
                break
            except RuntimeError:
                # Dead: bcs-api starts it again after a back-off (1 s the first time).
                if time.monotonic() > deadline or gateway.api.poll() is not None:
                    raise
                time.sleep(0.1)
        if gateway.pinned_pid != pid:
            if gateway.pinned_pid is not None:
                self.repins += 1
                log(f"    bcs-api-proxy{' ' + gateway.name if gateway.name else ''} restarted "
                    f"(pid {gateway.pinned_pid} -> {pid})" + (": pinning it again" if self.server_cpus else ""))
                path = f"/tunnels/clusters/{gateway.identifier}/1k"
                wait_until("the restarted bcs-api-proxy serving", lambda: http_get(
                    gateway.plain_port, path, token=gateway.user_token)[0] == 200, 30, gateway.api)
            if self.server_cpus and not pin(pid, self.server_cpus):
                raise RuntimeError(f"taskset could not pin bcs-api-proxy (pid {pid})")
            gateway.pinned_pid = pid
        return pid

    def pin_tree(self, master, cpus):
        """An nginx master and its workers onto `cpus`."""
        for pid in [master.pid] + children(master.pid):
            pin(pid, cpus)

    def pinning(self):
        """The report's line on CPU pinning, with each process's affinity as read back from /proc."""
        if not self.server_cpus:
            why = "--no-pin" if self.args.no_pin else "fewer than 2 CPUs"
            return f"off ({why}): every process may run on every CPU"
        seen = {"bcs-api-proxy": set(), "nginx-proxy": set(), "origin": set(), "bcs-api": set(), "bench.py": set()}
        for g in self.gateways.values():
            seen["bcs-api-proxy"] |= thread_affinity(self.proxy_pid(g))
            seen["bcs-api"] |= thread_affinity(g.api.pid)
        for pid in [self.nginx.pid] + children(self.nginx.pid):
            seen["nginx-proxy"] |= thread_affinity(pid)
        for pid in [self.origin.pid] + children(self.origin.pid):
            seen["origin"] |= thread_affinity(pid)
        seen["bench.py"] = thread_affinity(os.getpid())
        read = "; ".join(f"{k} {'/'.join(sorted(v)) or '?'}" for k, v in seen.items())
        return (f"**on** (taskset): the server under test on CPU {cpu_list(self.server_cpus)} (bcs-api-proxy, all "
                f"threads, pinned again after a restart; nginx-proxy master and workers; the origin itself only "
                f"during direct-origin runs), wrk, the origin nginx, bcs-api and bench.py on CPU "
                f"{cpu_list(self.load_cpus)}; read back from /proc: {read}; proxy restarts seen (and pinned again): "
                f"{self.repins}")

    # -- set-up

    def setup(self):
        a = self.args
        self.dir = tempfile.mkdtemp(prefix="bcs-vs-nginx-")
        # nginx workers run as `nobody` when started as root: they must reach www/.
        os.chmod(self.dir, 0o755)
        d = self.dir
        if self.load_cpus:
            # Inherited by everything started from here on: the origin, bcs-api, wrk, curl.
            os.sched_setaffinity(0, self.load_cpus)
        for sub in ("www", "logs", "tmp"):
            os.makedirs(os.path.join(d, sub))
        for name, n in SIZES.items():
            with open(os.path.join(d, "www", name), "wb") as f:
                f.write(b'{"data":"' + b"x" * (n - 11) + b'"}')
        self.expected = {name: hashlib.sha256(open(os.path.join(d, "www", name), "rb").read()).hexdigest()
                         for name in SIZES}
        make_certificates(d)
        self.origin_port, self.origin_tls_port, self.nginx_port, self.nginx_tls_port = free_ports(4)
        self.ports = {"ORIGIN": self.origin_port, "ORIGIN_TLS": self.origin_tls_port, "NGINX": self.nginx_port,
                      "NGINX_TLS": self.nginx_tls_port, "WORKERS": a.nginx_workers,
                      "J1K": open(os.path.join(d, "www", "1k")).read()}
        with open(os.path.join(d, "upstream.conf"), "w") as f:
            f.write(fill(ORIGIN_CONF, self.ports))

        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.origin = self.procs.start("origin nginx", [nginx, "-p", d + "/", "-c", "upstream.conf",
                                                        "-e", "logs/upstream.err", "-g", "daemon off;"], cwd=d)
        wait_until("origin nginx", lambda: http_get(self.origin_port, "/1k")[0] == 200, 10, self.origin)
        wait_until("origin nginx TLS", lambda: http_get(self.origin_tls_port, "/1k", True)[0] == 200, 10, self.origin)

        self.zk_port = self.zk = None
        if MESOS in a.workloads:
            self.zk_port = free_ports(1)[0]
            self.zk = mesos.start_zookeeper(self.procs, d, self.zk_port)
            mesos.register_driver(self.zk_port, MESOS_CLUSTER, "127.0.0.1", self.origin_port)
            log(f"ZooKeeper on :{self.zk_port}; mesos-driver {MESOS_CLUSTER} -> origin :{self.origin_port}")

        main_env = {}
        if a.access_log == "off":
            main_env["BCS_LOG"] = VARIANTS["nolog"]["BCS_LOG"]
        if a.driver == "legacy":
            main_env["BCS_PROXY_DRIVER"] = "legacy"
        for name, env in [("", main_env)] + [(v, VARIANTS[v]) for v in a.variants]:
            self.gateways[name] = Gateway(self, name, env)
            self.gateways[name].start()
            self.proxy_pid(self.gateways[name])
            if MESOS in a.workloads:
                g = self.gateways[name]
                path = "/bcsapi/v4/scheduler/mesos/1k"
                wait_until("bcs-api-proxy serving the mesos route", lambda: http_get(
                    g.plain_port, path, token=g.user_token, headers={"BCS-ClusterID": MESOS_CLUSTER})[0] == 200,
                    30, g.api)
        self.upstream_scheme = self.main.upstream_scheme
        self.upstream_refusal = self.main.upstream_refusal
        self.driver = self.main.driver

        # nginx-proxy takes the same upstream leg as the gateway got.
        tls = self.upstream_scheme == "https"
        values = dict(self.ports, UPSTREAM_SCHEME=self.upstream_scheme,
                      UPSTREAM_PORT=self.origin_tls_port if tls else self.origin_port,
                      UPSTREAM_TLS=UPSTREAM_TLS_CONF if tls else "")
        with open(os.path.join(d, "proxy.conf"), "w") as f:
            f.write(fill(PROXY_CONF, values))
        self.nginx = self.procs.start("proxy nginx", self.pinned_argv([nginx, "-p", d + "/", "-c", "proxy.conf",
                                                                       "-e", "logs/proxy.err", "-g", "daemon off;"]),
                                      cwd=d)
        wait_until("proxy nginx", lambda: http_get(self.nginx_port, "/1k")[0] == 200, 10, self.nginx)
        self.check_bodies()
        if tls:
            self.upstream_protocols = {
                "bcs-api-proxy": self.upstream_protocol(self.main.url(False, "tls-protocol"), self.main.user_token),
                "nginx-proxy": self.upstream_protocol(f"http://127.0.0.1:{self.nginx_port}/tls-protocol", None)}
            log(f"upstream leg: {self.upstream_protocols}")

    def upstream_protocol(self, url, token):
        """The TLS version the origin saw on a proxy's upstream leg (its /tls-protocol answer), or why not."""
        u = urllib.parse.urlsplit(url)
        try:
            status, body = http_get(u.port, u.path, token=token)
        except OSError as e:
            return f"unknown ({e})"
        return body.decode(errors="replace") if status == 200 else f"unknown (status {status})"

    def target(self, config):
        """(url for a size, nginx master or None, gateway or None, the token wrk sends)"""
        main = self.main
        if config == "direct-origin":
            return (lambda s: f"http://127.0.0.1:{self.origin_port}/{s}"), self.origin, None, main.user_token
        if config in ("nginx-proxy", "nginx-proxy-tls"):
            port, scheme = (self.nginx_tls_port, "https") if config.endswith("tls") else (self.nginx_port, "http")
            return (lambda s: f"{scheme}://127.0.0.1:{port}/{s}"), self.nginx, None, main.user_token
        if config == "bcs-proxy-tls":
            return (lambda s: main.url(True, s)), None, main, main.user_token
        gateway = self.gateways["" if config == "bcs-proxy" else config[len("bcs-proxy-"):]]
        return (lambda s: gateway.url(False, s)), None, gateway, gateway.user_token

    def workload_url(self, config, key):
        """The URL a workload fetches from a configuration: the mesos workload takes the mesos route
        (bcs-api-proxy) or the driver's own path (nginx-proxy, the origin); the others a size."""
        url_of = self.target(config)[0]
        if key != MESOS:
            return url_of(workload_size(key))
        base = url_of("").rsplit("/", 1)[0]
        if config.startswith("bcs-proxy"):
            return base.split("/tunnels/", 1)[0] + "/bcsapi/v4/scheduler/mesos/1k"
        return base + "/mesosdriver/v4/1k"

    def server_pids(self, config):
        _, master, gateway, _ = self.target(config)
        if gateway is not None:
            return [self.proxy_pid(gateway)]
        return [master.pid] + children(master.pid)

    def our_pids(self):
        ours = {os.getpid()}
        for master in (self.origin, self.nginx):
            ours |= {master.pid, *children(master.pid)}
        for g in self.gateways.values():
            ours |= {g.api.pid, *children(g.api.pid)}
        if self.zk:
            ours.add(self.zk.pid)
        return ours

    def check_bodies(self):
        """Every configuration returns every size byte for byte before anything is measured."""
        sizes = sorted({workload_size(k) for k in self.args.workloads}, key=list(SIZES).index)
        for config in self.args.configs:
            url_of, _, _, token = self.target(config)
            for size in sizes:
                url = url_of(size)
                tls = url.startswith("https")
                port = int(url.split(":")[2].split("/")[0])
                path = "/" + url.split("/", 3)[3]
                status, body = http_get(port, path, tls, token)
                if status != 200 or hashlib.sha256(body).hexdigest() != self.expected[size]:
                    raise RuntimeError(f"{config} {size}: status {status}, {len(body)} bytes, not the file")
            if MESOS in self.args.workloads:
                url = self.workload_url(config, MESOS)
                port = int(url.split(":")[2].split("/")[0])
                path = "/" + url.split("/", 3)[3]
                status, body = http_get(port, path, url.startswith("https"), token,
                                        headers={"BCS-ClusterID": MESOS_CLUSTER})
                if status != 200 or hashlib.sha256(body).hexdigest() != self.expected["1k"]:
                    raise RuntimeError(f"{config} {MESOS}: status {status}, {len(body)} bytes, not the file")
        log(f"bodies checked: {len(self.args.configs)} configurations x {len(sizes)} sizes byte for byte"
            + (", and the mesos route" if MESOS in self.args.workloads else ""))

    # -- measuring

    def wrk(self, url, token, secs, close=False, mesos_route=False):
        """One wrk run; with `close`, every request asks `Connection: close`, so wrk opens a new connection
        (and, on https, makes a new TLS handshake) for each request; with `mesos_route`, every request
        names the mesos cluster (`BCS-ClusterID`), as the mesos route requires."""
        argv = ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{secs}s", "--latency",
                "-H", f"Authorization: Bearer {token}", *(["-H", "Connection: close"] if close else []),
                *(["-H", f"BCS-ClusterID: {MESOS_CLUSTER}"] if mesos_route else []), url]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.items.append(("wrk", p, 2))
        try:
            out, _ = p.communicate(timeout=secs + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        self.procs.items.remove(("wrk", p, 2))
        return out.decode(errors="replace"), p.pid

    def measure_once(self, config, key, secs):
        """One wrk run of a workload (a size, or CLOSE) against a configuration, with the CPU of everyone
        involved. With pinning, the origin is the server under test in direct-origin runs: it moves to the
        server CPUs for the run and back."""
        if config == "direct-origin" and self.server_cpus:
            self.pin_tree(self.origin, self.server_cpus)
            try:
                return self._measure_once(config, key, secs)
            finally:
                self.pin_tree(self.origin, self.load_cpus)
        return self._measure_once(config, key, secs)

    def _measure_once(self, config, key, secs):
        _, _, gateway, token = self.target(config)
        pids = self.server_pids(config)
        origin_pids = [self.origin.pid] + children(self.origin.pid)
        admin_pid = gateway.api.pid if gateway else self.main.api.pid
        ours = self.our_pids()
        threads0 = thread_ticks(pids[0]) if gateway else {}
        us0, o0, a0 = user_system_ticks(pids), cpu_ticks(origin_pids), cpu_ticks([admin_pid])
        c0, seg0 = sum(us0), tcp_segments_sent()
        self_c0 = os.times()
        snap0 = cpu_snapshot()
        t0 = time.monotonic()
        out, _ = self.wrk(self.workload_url(config, key), token, secs, close=key == CLOSE, mesos_route=key == MESOS)
        elapsed = time.monotonic() - t0
        snap1 = cpu_snapshot()
        self_c1 = os.times()
        us1, o1, a1 = user_system_ticks(pids), cpu_ticks(origin_pids), cpu_ticks([admin_pid])
        c1, seg1 = sum(us1), tcp_segments_sent()
        threads1 = thread_ticks(pids[0]) if gateway else {}
        r = parse_wrk(out)
        r["server_user"] = (us1[0] - us0[0]) / CLK_TCK
        r["server_system"] = (us1[1] - us0[1]) / CLK_TCK
        r["segments"] = seg1 - seg0
        r["server_cpu"] = (c1 - c0) / CLK_TCK
        r["origin_cpu"] = (o1 - o0) / CLK_TCK
        r["admin_cpu"] = (a1 - a0) / CLK_TCK
        # wrk is our child: its CPU is what this process gained in children's time.
        r["wrk_cpu"] = (self_c1.children_user + self_c1.children_system
                        - self_c0.children_user - self_c0.children_system)
        r["noise_cpu"], r["noise_who"] = noise(snap0, snap1, ours, round(r["wrk_cpu"] * CLK_TCK))
        r["threads"] = {k: (v - threads0.get(k, 0)) / CLK_TCK for k, v in threads1.items()}
        r["elapsed"] = elapsed
        r["pids"] = pids
        return r

    def measure(self, config, size, secs):
        limit = self.args.noise_limit * secs
        best = None
        for attempt in range(1, self.args.tries + 1):
            self.wait_for_quiet()
            r = self.measure_once(config, size, secs)
            r["tries"] = attempt
            if best is None or r["noise_cpu"] < best["noise_cpu"]:
                best = r
            if r["noise_cpu"] <= limit:
                self.last_clean = time.monotonic()
            if r["noise_cpu"] <= limit or r.get("failed") or attempt == self.args.tries or not self.patient():
                break
            self.spend_patience(r["elapsed"])
            log(f"    disturbed: {r['noise_cpu']:.2f} CPU-s outside the benchmark ({r['noise_who']}); again")
        best["disturbed"] = best["noise_cpu"] > limit
        best["tries"] = attempt
        return best

    def wait_for_quiet(self):
        """Waits (at most --quiet-wait seconds) until one second passes with no more than --noise-limit
        CPU-s used outside the benchmark, so a run does not start in the middle of someone's build. A run
        that came out clean less than a second ago is that quiet second already: no wait then."""
        if self.last_clean is not None and time.monotonic() - self.last_clean < 1 or not self.patient():
            return
        start = time.monotonic()
        deadline = start + min(self.args.quiet_wait, self.args.patience - self.patience_spent)
        ours = self.our_pids()
        waited = False
        while time.monotonic() < deadline:
            before = cpu_snapshot()
            time.sleep(1)
            used, who = noise(before, cpu_snapshot(), ours)
            if used <= self.args.noise_limit:
                break
            if not waited:
                log(f"    waiting up to {self.args.quiet_wait}s for quiet ({used:.2f} CPU-s/s outside: {who})")
                waited = True
        self.spend_patience(time.monotonic() - start)

    def patient(self):
        """Whether --patience has time left. On a machine whose hypervisor steals CPU in bursts, waiting
        for quiet and trying disturbed runs again can add minutes; once the allowance is spent, runs go
        ahead at once and a disturbed one is kept (marked † in the tables)."""
        return self.patience_spent < self.args.patience

    def spend_patience(self, secs):
        self.patience_spent += secs
        if not self.patient() and self.patience_spent - secs < self.args.patience:
            log(f"    --patience spent ({self.patience_spent:.0f} s): no more waiting for quiet or trying again")

    def run(self):
        """The wrk matrix (throughput sizes and the close workload), interleaved round -> workload ->
        configuration, then the propagation and watch scenarios."""
        a = self.args
        self.runs = {(c, k): [] for k in a.workloads for c in workload_configs(a, k)}
        # One short pass first (not recorded): pools filled, code paged in, TLS tables built. One size
        # does that for every size (the bodies check has read each file already); the close workload
        # needs none of its own, it opens new connections anyway; the mesos route fills its own pool.
        t0 = time.monotonic()
        warm = [k for k in a.workloads if k != CLOSE][:1] + [k for k in a.workloads if k == MESOS][:1]
        for key in dict.fromkeys(warm or a.workloads):
            for config in workload_configs(a, key):
                token = self.target(config)[3]
                self.wrk(self.workload_url(config, key), token, 1, close=key == CLOSE, mesos_route=key == MESOS)
        for rnd in range(1, a.rounds + 1):
            for key in a.workloads:
                for config in workload_configs(a, key):
                    r = self.measure(config, key, a.duration)
                    r["round"] = rnd
                    self.runs[(config, key)].append(r)
                    log(f"round {rnd} {key:>8} {config:<22} {r['rps']:>10,.0f} req/s  p50 {r['p50']:.2f} ms  "
                        f"p99 {r['p99']:.2f} ms  errors {r['errors']}  server {r['server_cpu']:.1f} CPU-s  "
                        f"origin {r['origin_cpu']:.1f}  wrk {r['wrk_cpu']:.1f}  outside {r['noise_cpu']:.2f}"
                        + (" (disturbed)" if r["disturbed"] else ""))
        if a.workloads:
            self.timings["wrk matrix"] = time.monotonic() - t0
        if "latency" in a.scenarios:
            t0 = time.monotonic()
            self.extra["latency"] = latency.measure(self)
            self.timings["latency"] = time.monotonic() - t0
        if "propagation" in a.scenarios:
            t0 = time.monotonic()
            self.extra["propagation"] = scenarios.propagation(self, a.propagation_samples)
            self.timings["propagation"] = time.monotonic() - t0
        if "apply" in a.scenarios:
            t0 = time.monotonic()
            self.extra["apply"] = self.snapshot_apply()
            self.timings["snapshot apply"] = time.monotonic() - t0
        if "watch" in a.scenarios:
            t0 = time.monotonic()
            self.extra["watch"] = scenarios.watch(self, a.streams)
            self.timings["watch"] = time.monotonic() - t0
        if "instructions" in a.scenarios:
            t0 = time.monotonic()
            self.extra["instructions"] = instructions.measure(self)
            self.timings["instructions"] = time.monotonic() - t0
        self.log_bytes = sum(os.path.getsize(g.err) for g in self.gateways.values())
        self.proxy_restarts = sum(len({tuple(r["pids"]) for r in rs}) - 1
                                  for (c, _), rs in self.runs.items() if c.startswith("bcs"))

    def snapshot_apply(self):
        """target/release/bcs-snapshot-apply (benches/snapshot-apply): what the proxy does with a snapshot
        frame of 10 000 clusters and 1 000 000 tokens, stage by stage, on the server CPUs."""
        argv = [os.path.join(self.args.root, "target", "release", "bcs-snapshot-apply"),
                "--clusters", "10000", "--tokens", "1000000", "--rounds", "3"]
        if self.server_cpus:
            argv = ["taskset", "-c", cpu_list(self.server_cpus)] + argv
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"bcs-snapshot-apply failed: {out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        log(f"snapshot apply (10k clusters, 1M tokens): {result['apply_ms']:.0f} ms")
        return result

    def hold(self):
        """--hold: set up, print how to reach each configuration, wait, stop. For profiling by hand."""
        log(f"holding for {self.args.hold}s (Ctrl-C stops everything); nginx-proxy master pid {self.nginx.pid}, "
            f"origin master pid {self.origin.pid}")
        log(f"CPU pinning: {self.pinning()}")
        for config in self.args.configs:
            url_of, _, gateway, token = self.target(config)
            pid = f" (bcs-api-proxy pid {self.proxy_pid(gateway)})" if gateway else ""
            log(f"  {config:<22} wrk -t1 -c64 -d10s --latency -H 'Authorization: Bearer {token}' "
                f"{url_of(self.args.sizes[0])}{pid}")
        time.sleep(self.args.hold)

    def cleanup(self):
        self.procs.stop_all()
        if self.dir and not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir:
            log(f"kept {self.dir}")


def workload_configs(args, key):
    """The configurations a workload of the wrk matrix runs on. The mesos route differs from the 1 KiB
    tunnel only in how the upstream is found, so it runs on the plain proxies alone: its client leg
    (TLS or not) and the origin's own answer (direct-origin) are the 1k rows' already."""
    if key == MESOS:
        return [c for c in args.configs if c != "direct-origin" and not c.endswith("-tls")]
    return args.configs


def workload_size(key):
    """The response size a workload of the wrk matrix fetches: the close and mesos workloads fetch 1k."""
    return "1k" if key in (CLOSE, MESOS) else key


def parse_wrk(out):
    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    r = {"raw": out, "rps": 0.0, "p50": float("nan"), "p99": float("nan"), "requests": 0, "non2xx": 0,
         "socket_errors": 0, "duration": 0.0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        if m := re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
            r[key] = ms(m.group(1), m.group(2))
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out):
        r["requests"] = int(m.group(1))
        r["duration"] = ms(m.group(2), m.group(3)) / 1000
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        r["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        r["socket_errors"] = sum(int(x) for x in m.groups())
        r["socket_detail"] = "connect {}, read {}, write {}, timeout {}".format(*m.groups())
    r["errors"] = r["non2xx"] + r["socket_errors"]
    if not r["rps"]:
        r["failed"] = True
        r["errors"] = max(r["errors"], 1)
    return r


# ---------------------------------------------------------------- report

def med(values):
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def fmt_int(v):
    return "–" if v != v else f"{v:,.0f}"


def summarize(bench):
    """{(config, workload): row dict} with medians over rounds."""
    rows = {}
    for (config, key), runs in bench.runs.items():
        secs = bench.args.duration
        rows[(config, key)] = {
            "rps": med([r["rps"] for r in runs]),
            "runs": runs,
            "mbs": med([r["rps"] for r in runs]) * SIZES[workload_size(key)] / 1e6,
            "p50": med([r["p50"] for r in runs]),
            "p99": med([r["p99"] for r in runs]),
            # normalised to 10 s so quick and full runs read alike
            "cpu10": med([r["server_cpu"] * 10 / (r["duration"] or secs) for r in runs]),
            "rpcpu": med([r["requests"] / r["server_cpu"] if r["server_cpu"] else float("nan") for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "non2xx": sum(r["non2xx"] for r in runs),
            "socket": sum(r["socket_errors"] for r in runs),
        }
    return rows


def baseline(config):
    """What a configuration's ratios are computed against."""
    if config == "direct-origin":
        return None
    return "nginx-proxy-tls" if config.endswith("-tls") else "nginx-proxy"


def ratio(a, b):
    return "–" if not b or a != a or b != b else f"{a / b:.2f}×"


def tables(bench, rows):
    """One table per response size of the throughput matrix."""
    out = []
    names = {"1k": "1k response (1 KiB)", "64k": "64k response (64 KiB)", "1m": "1m response (1 MiB)"}
    for size in bench.args.sizes:
        out.append(f"#### {names[size]}\n")
        out.append(matrix_table(bench, rows, size))
        out.append("")
    return "\n".join(out)


def close_table(bench, rows):
    """The close workload: 1 KiB, a new connection (and TLS handshake on -tls) per request."""
    return matrix_table(bench, rows, CLOSE)


def wrk_bound(bench, key):
    """A note on the rows of a workload whose median run had wrk busy nearly all the time (it makes a
    handshake per request too): there req/s says how fast wrk was, and req per CPU-s is the figure."""
    bound = []
    for config in workload_configs(bench.args, key):
        runs = sorted(bench.runs[(config, key)], key=lambda r: r["rps"])
        r = runs[len(runs) // 2]
        if r["duration"] and r["wrk_cpu"] >= 0.85 * r["duration"]:
            bound.append(f"{config} ({r['wrk_cpu']:.1f} CPU-s in {r['duration']:.1f} s)")
    if not bound:
        return "wrk was not the bottleneck in any row (its CPU stayed under 85 % of the run)."
    return ("wrk was busy at least 85 % of the run, so it bounded req/s, in: " + ", ".join(bound)
            + ". Read req per CPU-s for those rows.")


def matrix_table(bench, rows, key):
    """Every configuration of one workload of the wrk matrix, ratios against its nginx baseline."""
    a = bench.args
    n = a.rounds
    out = [f"| configuration | req/s median | {n} run{'s' if n > 1 else ''} | MB/s | p50 ms | p99 ms | "
           "CPU-s of server under test per 10 s | req per CPU-s | ratio req/s | ratio req per CPU-s | "
           f"errors (sum of {n}) |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for config in workload_configs(a, key):
        row = rows[(config, key)]
        base = rows.get((baseline(config), key))
        runs = ", ".join(fmt_int(r["rps"]) + ("†" if r["disturbed"] else "") for r in row["runs"])
        if row["errors"]:
            parts = []
            if row["non2xx"]:
                parts.append(f"{row['non2xx']} non-2xx")
            if row["socket"]:
                parts.append(f"{row['socket']} socket")
            if any(r.get("failed") for r in row["runs"]):
                parts.append("wrk failed")
            errors = ", ".join(parts)
        else:
            errors = "0"
        out.append(f"| {config} | {fmt_int(row['rps'])} | {runs} | {row['mbs']:,.0f} | {row['p50']:.2f} | "
                   f"{row['p99']:.2f} | {row['cpu10']:.1f} | {fmt_int(row['rpcpu'])} | "
                   f"{ratio(row['rps'], base['rps']) if base else '–'} | "
                   f"{ratio(row['rpcpu'], base['rpcpu']) if base else '–'} | {errors} |")
    return "\n".join(out)


def target_check(bench, rows):
    """perf.md section 6 targets, as a reading aid (never an exit status)."""
    out = ["| size | configuration | req/s ratio (aim) | req per CPU-s ratio (aim ≥ 1.00) | p99 bcs / nginx ms (aim ≤) |",
           "|---|---|---|---|---|"]
    aims = {"1k": 0.90, "64k": 1.00, "1m": 1.00}
    for size in bench.args.sizes:
        pairs = [(c, baseline(c), c.endswith("-tls")) for c in bench.args.configs if c.startswith("bcs-proxy")]
        for bcs, ngx, tls in pairs:
            if (bcs, size) not in rows or (ngx, size) not in rows:
                continue
            b, n = rows[(bcs, size)], rows[(ngx, size)]
            aim = 0.95 if tls else aims[size]
            rr = b["rps"] / n["rps"] if n["rps"] else float("nan")
            rc = b["rpcpu"] / n["rpcpu"] if n["rpcpu"] else float("nan")
            mark = lambda ok: "met" if ok else "**missed**"
            out.append(f"| {size} | {bcs} | {rr:.2f}× (≥ {aim:.2f}) {mark(rr >= aim)} | "
                       f"{rc:.2f}× {mark(rc >= 1.0)} | {b['p99']:.2f} / {n['p99']:.2f} {mark(b['p99'] <= n['p99'])} |")
    return "\n".join(out)


def cpu_split(bench):
    """Where the CPU went in each configuration's median run: server (its own code and the kernel's work
    for it, per request), origin, wrk, admin, outside, and the TCP segments the machine sent per request."""
    out = ["| workload | configuration | req/s | server CPU-s | server µs per request: user + system | "
           "TCP segments per request (machine) | origin CPU-s | wrk CPU-s | bcs-api (admin) CPU-s | "
           "outside CPU-s | proxy threads (CPU-s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in bench.args.workloads:
        for config in workload_configs(bench.args, size):
            runs = sorted(bench.runs[(config, size)], key=lambda r: r["rps"])
            r = runs[len(runs) // 2]
            threads = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["threads"].items(), key=lambda kv: -kv[1])
                                if v >= 0.05)
            done = r.get("requests") or 0
            per = lambda v: f"{v * 1e6 / done:.1f}" if done else "–"
            split = f"{per(r['server_user'])} + {per(r['server_system'])}"
            segments = f"{r['segments'] / done:.2f}" if done else "–"
            out.append(f"| {size} | {config} | {fmt_int(r['rps'])} | {r['server_cpu']:.1f} | {split} | {segments} | "
                       f"{r['origin_cpu']:.1f} | "
                       f"{r['wrk_cpu']:.1f} | {r['admin_cpu']:.2f} | {r['noise_cpu']:.2f} | {threads or '–'} |")
    return "\n".join(out)


def sh(argv, cwd=None):
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def environment(bench):
    a = bench.args
    commit = sh(["git", "rev-parse", "HEAD"], a.root)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=a.root,
                            capture_output=True, text=True, timeout=10).stdout
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    dirty_dirs = sorted({p.split("/")[0] for p in dirty})
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    os_name = "?"
    if os.path.exists("/etc/os-release"):
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', open("/etc/os-release").read(), re.M)
        os_name = m.group(1) if m else "?"
    nginx_v = sh([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]).replace("nginx version: ", "")
    wrk_v = sh(["wrk", "-v"]).splitlines()[0] if sh(["wrk", "-v"]) else "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "os": os_name,
        "commit": commit + (f" plus uncommitted changes in {', '.join(dirty_dirs)}" if dirty else ""),
        "command": shlex.join(["benches/vs-nginx/run"] + a.argv),
        "versions": f"{nginx_v}; {wrk_v}; {sh(['openssl', 'version'])}; {sh(['rustc', '--version'])}",
    }


def report(bench, env):
    a = bench.args
    rows = summarize(bench)
    disturbed = sum(r["disturbed"] for runs in bench.runs.values() for r in runs)
    total = sum(len(runs) for runs in bench.runs.values())
    md = [
        "# bcs-api-proxy vs nginx: latest run",
        "",
        f"- started: {env['date']}",
        f"- machine: `nproc` = {env['nproc']} ({env['cpu']}), kernel {env['kernel']}, {env['os']}",
        f"- commit: {env['commit']}",
        f"- command: `{env['command']}`",
        f"- tools: {env['versions']}",
        f"- scenarios: {', '.join(a.scenarios)}",
        f"- load: `wrk -t{a.threads} -c{a.connections} -d{a.duration}s --latency` with "
        "`Authorization: Bearer <user token>` on every configuration"
        + (" (and `-H 'Connection: close'` for the close workload)" if CLOSE in a.workloads else "")
        + f"; {a.rounds} round{'s' if a.rounds > 1 else ''}, ordered round → workload ("
        + ", ".join(a.workloads) + ") → configuration; medians per column",
        f"- CPU pinning: {bench.pinning()}",
        f"- bcs-api-proxy: `proxy_config.cores: {a.cores}`, driver {bench.driver}, `log_config.v: 0` "
        + ("(access log on: one line per request to stderr, redirected to a file)" if a.access_log == "on"
           else "(access log off through `BCS_LOG=info,rustls=error,bcs_proxy::access=off`)")
        + f"; nginx-proxy: `worker_processes {a.nginx_workers}`; origin: nginx, 1 worker (perf.md §4 configuration)",
        *([f"- variants (extra gateways, same binaries, plain port): "
           + "; ".join(f"`bcs-proxy-{v}`: " + ", ".join(f"`{e}={val}`" for e, val in VARIANTS[v].items())
                       for v in a.variants)] if a.variants else []),
        f"- upstream leg (both proxies to the origin): "
        + ("plain HTTP, as perf.md" if bench.upstream_scheme == "http" else
           "**TLS** (`https://`, cluster CA verified, name `kubernetes`; nginx with `proxy_ssl_verify on`, "
           "`proxy_ssl_session_reuse on`, `proxy_ssl_protocols TLSv1.2 TLSv1.3`; as the origin saw it: "
           + ", ".join(f"{k} {v}" for k, v in bench.upstream_protocols.items())
           + "), unlike perf.md's plain leg"
           + (f": bcs-api refused `http://` (\"{bench.upstream_refusal}\")" if bench.upstream_refusal else "")),
        f"- runs disturbed by other processes or the hypervisor (more than {a.noise_limit:.2f} CPU-s per second of run "
        f"outside the benchmark, steal included, after waiting up to {a.quiet_wait} s for a quiet second and {a.tries} tries, within "
        f"{a.patience} s for the whole run (`--patience`; {bench.patience_spent:.0f} s used); marked †): "
        f"{disturbed} of {total}",
        f"- bcs-api-proxy restarts during the run: {bench.proxy_restarts}; "
        f"gateway log written: {bench.log_bytes / 1e6:,.0f} MB",
        f"- time taken: {sum(bench.timings.values()):.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in bench.timings.items()) + "; the release build not counted)",
        "",
        "Ratios are against nginx-proxy (TLS rows against nginx-proxy-tls). MB/s counts response bodies. "
        "CPU-s is utime+stime of the server under test (nginx master and workers; the bcs-api-proxy process; "
        "for direct-origin, the origin), normalised to 10 s.",
        "",
    ]
    md += ["### Issue 6's targets", "", targets.table(bench, rows), ""]
    if a.sizes:
        md += [tables(bench, rows), "### Against the targets of perf.md §6", "", target_check(bench, rows), ""]
    if CLOSE in a.workloads:
        md += ["### A new connection per request (`Connection: close`, 1 KiB)", "",
               "wrk sends `Connection: close` on every request, so each request opens a new TCP connection "
               "to the configuration under test (and makes a full TLS handshake on the -tls rows: wrk does "
               "not resume sessions); the proxies' upstream leg stays pooled. Same columns as above.", "",
               close_table(bench, rows), "", wrk_bound(bench, CLOSE), ""]
    if MESOS in a.workloads:
        md += ["### The mesos route (1 KiB)", "",
               f"bcs-api-proxy: `GET /bcsapi/v4/scheduler/mesos/1k` with `BCS-ClusterID: {MESOS_CLUSTER}`, sent "
               "to the cluster's mesos-driver found through ZooKeeper (Debian's zookeeper package, one "
               "persistent driver node written with zkCli.sh) at `/mesosdriver/v4/1k`; the driver is the "
               "origin nginx over plain http (as a driver without cert_config). nginx-proxy: "
               "`/mesosdriver/v4/1k` to the same origin through a plain-http keep-alive upstream. Same columns "
               "as above, on the plain ports only: the route is what differs from the 1k tunnel, and the "
               "client leg and the origin's own answer are in the 1k table.", "", matrix_table(bench, rows, MESOS), ""]
    if "latency" in bench.extra:
        x = bench.extra["latency"]
        md += ["### Latency at the same request rate (open loop, 1 KiB)", "",
               f"`bcs-loadgen` (benches/loadgen) sends {x['rate']:,} req/s ({x['why']}) over "
               f"{a.connections} kept-alive connections to each configuration for {x['secs']} s after a "
               f"{latency.WARMUP_SECS:g}-s warm-up, with the same arrival times for all; {a.latency_rounds} interleaved rounds, "
               "medians per column. A request held up behind the previous answer on its connection counts "
               "from when it was due (held up: how many). Server CPU-s is the server under test's over the "
               "measured seconds.", "", latency.table(bench), ""]
    if "propagation" in bench.extra:
        md += ["### Snapshot propagation (REST change → proxy)", "", scenarios.propagation_table(bench), ""]
    if "apply" in bench.extra:
        x = bench.extra["apply"]
        ok = "met" if x["apply_ms"] <= 1000 else "**missed**"
        md += ["### Snapshot apply (10 000 clusters, 1 000 000 tokens)", "",
               "| frame MiB | decode ms | validate ms | compile ms | install ms | apply ms (sum) | "
               "admin's encode ms | RSS MiB (all) | tables MiB | target apply ≤ 1 000 ms |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
               f"| {x['frame_bytes'] / 2**20:,.0f} | {x['decode_ms']:.0f} | {x['validate_ms']:.0f} | "
               f"{x['compile_ms']:.0f} | {x['install_ms']:.1f} | {x['apply_ms']:.0f} | {x['encode_ms']:.0f} | "
               f"{x['rss_mib']:,.0f} | {x.get('tables_mib', float('nan')):,.0f} | {x['apply_ms']:.0f} {ok} |", "",
               "`target/release/bcs-snapshot-apply` (benches/snapshot-apply) on the server CPUs: a made-up "
               "snapshot (`bcs_shared::snapshot::synthetic`) encoded as admin sends it, then the proxy's own "
               "calls (decode the frame, `Snapshot::validate`, `Tables::compile`, install), medians of "
               f"{x['rounds']} rounds; it then finds a token and a cluster in what it installed. Persisting the "
               "sealed copy follows the install and is not counted (requests already use the new tables). "
               "RSS (all) is the benchmark process at the end, made-up snapshot and frame included; tables is "
               "what stays once all but the installed tables is freed and mimalloc has given the pages back "
               "(`mi_collect`): the memory a proxy keeps for this snapshot between applies.", ""]
    if "watch" in bench.extra:
        md += [f"### {bench.extra['watch']['n']:,} idle watch streams", "", scenarios.watch_table(bench), ""]
    if "instructions" in bench.extra:
        md += ["### User-space instructions per request (callgrind, 1 KiB GET, plain port)", "",
               instructions.table(bench), "",
               "Each proxy alone under `valgrind --tool=callgrind` on the server CPUs (a second "
               "bcs-api-proxy on the gateway's configuration and snapshot; a second nginx-proxy with "
               "`master_process off`), 16 kept-alive wrk connections, counters zeroed after a "
               f"{instructions.WARM_SECS}-s warm-up. "
               "The kernel's share (TCP, system calls, io_uring) is not counted: the wrk matrix's "
               "CPU-seconds measure it. A count repeats to within about 1.5 % for the same binary (bcs-api-proxy: 0.05 % over three runs), so it shows changes "
               "the CPU-seconds of this shared machine hide (instructions.py says how).", ""]
    if a.workloads:
        md += ["### Where the CPU went (median run of each row)", "", cpu_split(bench), ""]
    return "\n".join(md)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="benches/vs-nginx/run",
                                description="bcs-api-proxy next to nginx proxying the same origin, in one run.")
    p.add_argument("--duration", type=int, default=DEFAULT_DURATION,
                   help=f"seconds per wrk run (default {DEFAULT_DURATION})")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"interleaved rounds of the wrk matrix; medians are taken (default {DEFAULT_ROUNDS})")
    p.add_argument("--latency-rounds", type=int, default=latency.ROUNDS,
                   help=f"interleaved rounds of the latency scenario (default {latency.ROUNDS})")
    p.add_argument("--latency-secs", type=float, default=latency.SECS,
                   help=f"measured seconds per latency round, after its warm-up (default {latency.SECS:g})")
    p.add_argument("--quick", action="store_true",
                   help="3-s runs, 1 round (latency too), 20 propagation samples (explicit --duration/--rounds/... "
                        "win)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated subset of " + ", ".join(SCENARIOS) + " (default all): throughput = the "
                        "sizes x configurations matrix, close = 1 KiB with a new connection per request, "
                        "latency = p50/p99 at the same fixed request rate for both proxies (open loop, bcs-loadgen), "
                        "propagation = REST change to the proxy's first answer, watch = idle watch streams' memory, instructions = user-space instructions per "
                        "request of each proxy under callgrind")
    p.add_argument("--latency-rate", type=int, default=0, metavar="REQ_PER_S",
                   help="the latency scenario's fixed request rate (default: 35%% of nginx-proxy's lower median "
                        "1 KiB req/s, plain or TLS, in this run's wrk matrix; 8000 without the matrix)")
    p.add_argument("--propagation-samples", type=int, default=50,
                   help="token creations and revocations timed (default 50; --quick 20)")
    p.add_argument("--streams", type=int, default=10000, help="idle watch streams held at once (default 10000)")
    p.add_argument("--watch-client", choices=["plain", "tls"], default="plain",
                   help="the watch streams' client leg: the proxies' plain ports (default) or their TLS ports")
    p.add_argument("--no-pin", action="store_true",
                   help="no CPU pinning (by default, with 2 or more CPUs, the server under test runs on its own "
                        "CPUs through taskset and wrk, origin, bcs-api on the others)")
    p.add_argument("--server-cpus", metavar="LIST",
                   help="the CPUs of the server under test, taskset notation (default: the upper half, on 2 "
                        "cores CPU 1); the others take the load")
    p.add_argument("--sizes", default="1k,64k,1m", help="comma-separated subset of 1k,64k,1m")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--cores", type=int,
                   help="proxy_config.cores of bcs-api-proxy (default: the number of server CPUs when pinned, "
                        "1 on 2 cores; 2 with --no-pin)")
    p.add_argument("--nginx-workers", type=int,
                   help="worker_processes of nginx-proxy (default: as --cores)")
    p.add_argument("--access-log", choices=["on", "off"], default="off",
                   help="bcs-api-proxy's per-request access log (default off, as nginx-proxy's `access_log off`: "
                        "both off or both on; `on` measures the deployed default, log_config.access_log: true)")
    p.add_argument("--upstream", choices=["auto", "http", "https"], default="auto",
                   help="the proxies' leg to the origin: http (perf.md), https (as real apiservers), or auto: "
                        "http when bcs-api accepts an http:// server address, else https (default auto)")
    p.add_argument("--driver", choices=["auto", "legacy"], default="auto",
                   help="legacy: BCS_PROXY_DRIVER=legacy (epoll) instead of io_uring when available")
    p.add_argument("--variants", default="",
                   help="extra gateways, each measured as bcs-proxy-<name> on its plain port, comma-separated: "
                        + ", ".join(f"{k} ({' '.join(f'{e}={v}' for e, v in env.items())})"
                                    for k, env in VARIANTS.items()))
    p.add_argument("--noise-limit", type=float, default=0.05,
                   help="CPU-s per second of run used outside the benchmark above which a run is tried again "
                        "(default 0.05)")
    p.add_argument("--quiet-wait", type=int, default=15, metavar="SECS",
                   help="before each try, wait up to SECS for one quiet second (default 15; 0: never wait)")
    p.add_argument("--tries", type=int, default=3, help="tries per measurement when disturbed (default 3)")
    p.add_argument("--patience", type=int, default=DEFAULT_PATIENCE, metavar="SECS",
                   help="seconds the whole run may spend waiting for quiet and trying disturbed runs again; "
                        f"then disturbed runs are kept and marked (default {DEFAULT_PATIENCE})")
    p.add_argument("--output", default=os.path.join(HERE, "results", "latest.md"),
                   help="markdown report (default benches/vs-nginx/results/latest.md); '-' for none")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    p.add_argument("--hold", type=int, default=0, metavar="SECS",
                   help="set up, print the URLs and the token, wait SECS (at most 3600) and stop: for profiling")
    p.add_argument("--check-args", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(HERE)), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = [x for x in argv if x != "--check-args" and not x.startswith("--root")]
    if args.quick:
        if "--duration" not in " ".join(argv):
            args.duration = 3
        if "--rounds" not in " ".join(argv):
            args.rounds = 1
        if "--latency-rounds" not in " ".join(argv):
            args.latency_rounds = 1
        if "--propagation-samples" not in " ".join(argv):
            args.propagation_samples = 20
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    for x in args.scenarios:
        if x not in SCENARIOS:
            p.error(f"unknown scenario {x!r} (known: {', '.join(SCENARIOS)})")
    if args.server_cpus:
        try:
            cpus = parse_cpu_list(args.server_cpus)
        except ValueError:
            p.error(f"--server-cpus {args.server_cpus!r}: not a CPU list such as 1 or 2-3")
        avail = os.sched_getaffinity(0)
        if not cpus <= avail or not avail - cpus:
            p.error(f"--server-cpus {args.server_cpus!r}: must be some, not all, of CPUs {cpu_list(avail)}")
    server, _ = cpu_plan(args)
    if args.cores is None:
        args.cores = len(server) if server else 2
    if args.nginx_workers is None:
        args.nginx_workers = args.cores
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    known = CONFIGS[:3] + [f"bcs-proxy-{v}" for v in args.variants] + CONFIGS[3:]
    configs = [c for c in args.configs.split(",") if c]
    if "--configs" not in " ".join(argv):
        configs = known
    for s in args.sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}")
    for c in configs:
        if c not in known:
            p.error(f"unknown configuration {c!r} (known: {', '.join(known)})")
    args.configs = [c for c in known if c in configs]
    # --check-args runs before `run` installs what is missing: what the machine lacks is judged later.
    if args.check_args:
        pass
    elif "instructions" in args.scenarios and not instructions.available():
        if "--scenarios" in " ".join(argv):
            p.error("the instructions scenario needs valgrind (apt-get install valgrind)")
        print("bench: skipping the instructions scenario: valgrind is not installed", file=sys.stderr)
        args.scenarios.remove("instructions")
    if not args.check_args and "latency" in args.scenarios and not os.path.exists(latency.binary(args.root)):
        p.error(f"the latency scenario needs {latency.binary(args.root)}: "
                "cargo build --release -p bcs-loadgen (benches/vs-nginx/run builds it)")
    if not args.check_args and "mesos" in args.scenarios and mesos.available():
        if "--scenarios" in " ".join(argv):
            p.error(f"the mesos scenario needs ZooKeeper: {mesos.available()}")
        print(f"bench: skipping the mesos scenario: {mesos.available()}", file=sys.stderr)
        args.scenarios.remove("mesos")
    args.workloads = ((args.sizes if "throughput" in args.scenarios else [])
                      + ([CLOSE] if "close" in args.scenarios else [])
                      + ([MESOS] if "mesos" in args.scenarios else []))
    if "throughput" not in args.scenarios:
        args.sizes = []
    if min(args.duration, args.rounds, args.latency_rounds, args.connections, args.threads, args.cores,
           args.nginx_workers, args.tries, args.propagation_samples, args.streams) < 1:
        p.error("--duration, --rounds, --latency-rounds, --connections, --threads, --cores, --nginx-workers, "
                "--tries, --propagation-samples, --streams must be >= 1")
    if not 0.5 <= args.latency_secs <= 300:
        p.error("--latency-secs must be between 0.5 and 300")
    if args.streams > 30000:
        p.error("--streams above 30000: each takes 4 ports' worth of loopback connections")
    if not 0 <= args.quiet_wait <= 600:
        p.error("--quiet-wait must be between 0 and 600 seconds")
    if not 0 <= args.patience <= 3600:
        p.error("--patience must be between 0 and 3600 seconds")
    if not 0 <= args.hold <= 3600:
        p.error("--hold must be between 0 and 3600 seconds")
    if args.duration > 300:
        p.error("--duration above 300 s: keep each load bounded")
    return args


def main():
    args = parse_args(sys.argv[1:])
    if args.check_args:
        return 0
    for binary in ("bcs-api", "bcs-api-proxy"):
        if not os.access(os.path.join(args.root, "target", "release", binary), os.X_OK):
            sys.exit(f"target/release/{binary} is missing: run benches/vs-nginx/run (it builds first)")
    fd_limit = raise_fd_limit()
    if "watch" in args.scenarios and fd_limit < 2 * args.streams + 1000:
        log(f"note: RLIMIT_NOFILE stays at {fd_limit} (raising it takes CAP_SYS_RESOURCE): the watch scenario "
            f"will hold as many of the {args.streams:,} streams as the proxy's descriptors allow")
    bench = Bench(args)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        # Before anything runs: the commit and work tree the binaries were just built from.
        env = environment(bench)
        t0 = time.monotonic()
        bench.setup()
        bench.timings["set-up"] = time.monotonic() - t0
        m = bench.main
        log(f"temp dir {bench.dir}; origin :{bench.origin_port}, nginx :{bench.nginx_port}/:{bench.nginx_tls_port}, "
            f"bcs :{m.plain_port}/:{m.tls_port}, admin :{m.admin_port}; proxy driver {bench.driver}; "
            f"upstream leg {bench.upstream_scheme}; CPU pinning: server on "
            f"{cpu_list(bench.server_cpus) if bench.server_cpus else 'any'}, load on "
            f"{cpu_list(bench.load_cpus) if bench.load_cpus else 'any'} (cores {args.cores}, nginx workers "
            f"{args.nginx_workers})")
        if args.hold:
            bench.hold()
            return 0
        bench.run()
        text = report(bench, env)
        print()
        print(text)
        if args.output != "-":
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                f.write(text)
            log(f"written to {os.path.relpath(args.output, args.root)}")
    except RuntimeError as e:
        log(f"bench: {e}")
        if bench.dir:
            logs = [os.path.join(g.dir, "bcs-api.stderr") for g in bench.gateways.values()]
            names = ("upstream.err", "proxy.err", "watch-origin.err", "watch-proxy.err", "watch-holder.out")
            for path in logs + [os.path.join(bench.dir, "logs", n) for n in names]:
                name = os.path.relpath(path, bench.dir)
                if os.path.exists(path):
                    log(f"--- last lines of {name}")
                    log("".join(open(path, errors="replace").readlines()[-15:]))
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.cleanup()
    return 0


if __name__ == "__main__":
    # Run the module as `bench`, the name scenarios.py imports it by, so that there is one copy of it.
    import bench as _self

    sys.exit(_self.main())
