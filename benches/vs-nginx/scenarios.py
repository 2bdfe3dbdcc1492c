"""The vs-nginx benchmark's scenarios beyond the wrk matrix (Python 3 stdlib only): how long a REST change
takes to reach the proxy (`propagation`), and what idle watch streams cost the proxy in memory (`watch`).
bench.py runs them after the matrix, on the gateway it set up, and puts their tables in the report.
"""
import asyncio
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

import bench as b

# ---------------------------------------------------------------- propagation

PROPAGATION_TARGET_MS = 100.0
POLL_EVERY = 0.001  # seconds between two polls of the proxy
POLL_TIMEOUT = 5.0  # a change not seen by then counts as a timeout


class KeptAlive:
    """GETs over one kept-alive HTTP/1.1 connection to 127.0.0.1:port (opened again when the server
    closes it), returning only the status: the tight poll of the propagation scenario."""

    def __init__(self, port):
        self.port, self.sock, self.buf = port, None, b""
        self.connects = 0

    def status(self, path, token):
        for attempt in (1, 2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buf = b""
                self.connects += 1
            try:
                self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                                  f"Authorization: Bearer {token}\r\nUser-Agent: bench-propagation\r\n\r\n".encode())
                status, close = self._response()
            except OSError:
                self.close()
                if attempt == 2:
                    raise
                continue
            if close:
                self.close()
            return status

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed by the server")
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            self._recv()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _response(self):
        """(status, the server closes) of one response, its body read and dropped."""
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip().lower()
        close = headers.get(b"connection") == b"close" or lines[0].startswith(b"HTTP/1.0")
        if b"content-length" in headers:
            self._take(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").endswith(b"chunked"):
            while (size := int(self._line().split(b";")[0], 16)) > 0:
                self._take(size + 2)
            while self._line():  # trailers, then the empty line
                pass
        elif status not in (204, 304):
            close = True  # a body until close: not worth reading for a status
        return status, close


def poll_until(poller, path, token, want, since):
    """Polls until the proxy answers `want`: (ms from `since` to that answer or None on timeout, polls,
    statuses seen that were neither `want` nor the one before the change)."""
    polls, odd = 0, {}
    while True:
        status = poller.status(path, token)
        now = time.monotonic()
        polls += 1
        if status == want:
            return (now - since) * 1000, polls, odd
        if status not in (200, 401):
            odd[status] = odd.get(status, 0) + 1
        if now - since > POLL_TIMEOUT:
            return None, polls, odd
        time.sleep(POLL_EVERY)


def rest_call(conn, method, path, token):
    """One REST call over a kept-alive connection to admin: the parsed JSON answer."""
    for attempt in (1, 2):
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            body = r.read()
            break
        except (OSError, http.client.HTTPException):
            conn.close()
            if attempt == 2:
                raise
    if r.status != 200:
        raise RuntimeError(f"{method} {path}: {r.status} {body[:200]!r}")
    return json.loads(body)


def propagation(bench, samples):
    """Snapshot propagation, `samples` times: a new token for the bench user through the REST API
    (POST /rest/users/<id>/tokens, as the super user), timed from the REST answer until the proxy first
    answers 200 to a request carrying it; then the token revoked (DELETE /rest/users/<id>/tokens/<token
    id>), timed until the proxy's first 401. The proxy is polled every millisecond over one kept-alive
    connection to its plain port (its 1k route, through to the origin once the token is valid)."""
    g = bench.main
    b.log(f"propagation: {samples} token creations and revocations, REST answer -> the proxy's first 200 / 401")
    admin = http.client.HTTPConnection("127.0.0.1", g.admin_port, timeout=10)
    poller = KeptAlive(g.plain_port)
    path = f"/tunnels/clusters/{g.identifier}/1k"
    res = {"samples": samples, "create": [], "revoke": [], "rest": [], "polls": 0, "odd": {},
           "timeouts": {"create": 0, "revoke": 0}}
    ours = bench.our_pids()
    snap0, t_start = b.cpu_snapshot(), time.monotonic()
    for _ in range(samples):
        for step in ("create", "revoke"):
            t0 = time.monotonic()
            if step == "create":
                token = rest_call(admin, "POST", f"/rest/users/{g.user_id}/tokens", g.admin_token)
            else:
                rest_call(admin, "DELETE", f"/rest/users/{g.user_id}/tokens/{token['ID']}", g.admin_token)
            answered = time.monotonic()
            res["rest"].append((answered - t0) * 1000)
            ms, polls, odd = poll_until(poller, path, token["Value"], 200 if step == "create" else 401, answered)
            res["polls"] += polls
            for k, v in odd.items():
                res["odd"][k] = res["odd"].get(k, 0) + v
            if ms is None:
                res["timeouts"][step] += 1
            else:
                res[step].append(ms)
        time.sleep(0.01)
    res["secs"] = time.monotonic() - t_start
    res["noise_cpu"], res["noise_who"] = b.noise(snap0, b.cpu_snapshot(), ours)
    res["connects"] = poller.connects
    poller.close()
    admin.close()
    for step, want in (("create", 200), ("revoke", 401)):
        ms = res[step]
        b.log(f"  {step}: first {want} after p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
              f"max {max(ms, default=float('nan')):.1f} ms; {res['timeouts'][step]} timeouts")
    return res


def pct(values, p):
    """The p-th percentile (nearest rank) of `values`, nan when empty."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, -(-len(values) * p // 100) - 1))]


def propagation_table(bench):
    """The propagation scenario's table: each direction's latency against the p99 target."""
    r = bench.extra["propagation"]
    mark = lambda v: "met" if v <= PROPAGATION_TARGET_MS else "**missed**"
    out = ["| change | samples | p50 ms | p99 ms | max ms | timeouts (> 5 s) | REST call p50 ms | "
           f"target p99 ≤ {PROPAGATION_TARGET_MS:.0f} ms |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    rest_create, rest_revoke = r["rest"][0::2], r["rest"][1::2]
    for step, label, rest in (("create", "token created → proxy's first 200", rest_create),
                              ("revoke", "token revoked → proxy's first 401", rest_revoke)):
        ms = r[step]
        p99 = pct(ms, 99) if not r["timeouts"][step] else float("inf")
        out.append(f"| {label} | {len(ms)} | {pct(ms, 50):.1f} | {pct(ms, 99):.1f} | "
                   f"{max(ms, default=float('nan')):.1f} | {r['timeouts'][step]} | {statistics.median(rest):.1f} | "
                   f"{pct(ms, 99):.1f} {mark(p99)} |")
    odd = ", ".join(f"{k} × {v}" for k, v in sorted(r["odd"].items())) or "none"
    out += ["", f"Timed from the REST answer (`POST /rest/users/<id>/tokens`, then `DELETE "
            f"/rest/users/<id>/tokens/<token id>`, as the super user, over one kept-alive connection) until the "
            f"proxy's first 200 / 401 on its plain port, polled every {POLL_EVERY * 1000:.0f} ms over one kept-alive "
            f"connection ({r['polls']:,} polls, {r['connects']} connection(s) opened; other statuses seen: {odd}). "
            f"The resolution is about one poll (≈ 1.1 ms). {r['secs']:.1f} s in all; CPU used outside the benchmark "
            f"meanwhile: {r['noise_cpu']:.2f} CPU-s" + (f" ({r['noise_who']})" if r["noise_who"] else "") + "."]
    return "\n".join(out)


# ---------------------------------------------------------------- idle watch streams

STREAM_TARGET_KIB = 16.0
WATCH_PATH = "/api/v1/namespaces/default/pods?watch=true"
OPEN_CONCURRENCY = 256  # streams being opened at once
OPEN_TIMEOUT = 60.0  # for all of them
SETTLE = 1.0  # seconds between the last stream open and the memory reading
FD_SLACK = 200  # descriptors kept free under the open-files limit
WATCH_ORIGIN_WORKERS = 4  # reuseport spreads the streams, so no worker needs more descriptors than allowed
DRAIN_TIMEOUT = 5.0  # for the proxy's descriptors to come back down after a close
STEADY = 3.0  # seconds without change after which the descriptor count is taken as final

WATCH_ORIGIN_CONF = """# The watch scenario's apiserver: TLS (the gateway accepts only https:// apiservers) and plain, in front
# of watch_holder.py, which holds every watch open. Generated by benches/vs-nginx/scenarios.py.
worker_processes @ORIGIN_WORKERS@;
worker_rlimit_nofile @NOFILE@;
pid watch-origin.pid;
error_log logs/watch-origin.err warn;
events { worker_connections @WCONN@; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 75s;
    client_body_temp_path tmp/cb3; proxy_temp_path tmp/px3;
    fastcgi_temp_path tmp/fc3; uwsgi_temp_path tmp/uw3; scgi_temp_path tmp/sc3;
    upstream holder { server 127.0.0.1:@HOLDER@; }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_read_timeout 1h; proxy_send_timeout 1h; send_timeout 1h;
    server {
        listen 127.0.0.1:@WATCH_ORIGIN@ reuseport backlog=4096;
        location / { proxy_pass http://holder; }
    }
    server {
        listen 127.0.0.1:@WATCH_ORIGIN_TLS@ ssl reuseport backlog=4096;
        ssl_certificate     cert.pem;
        ssl_certificate_key key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location / { proxy_pass http://holder; }
    }
}
"""

# nginx-proxy's settings (bench.PROXY_CONF), plus what a watch needs and enough connections.
WATCH_PROXY_CONF = """# nginx-proxy for the watch scenario. Generated by benches/vs-nginx/scenarios.py.
worker_processes @WORKERS@;
worker_rlimit_nofile @NOFILE@;
pid watch-proxy.pid;
error_log logs/watch-proxy.err warn;
events { worker_connections @WCONN@; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    client_body_temp_path tmp/cb4; proxy_temp_path tmp/px4;
    fastcgi_temp_path tmp/fc4; uwsgi_temp_path tmp/uw4; scgi_temp_path tmp/sc4;
    upstream backend {
        server 127.0.0.1:@UPSTREAM_PORT@;
        keepalive 128;
        keepalive_requests 1000000;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_buffer_size 16k;
    proxy_buffers 8 64k;
    proxy_busy_buffers_size 128k;
    proxy_max_temp_file_size 0;
    # What a watch needs (not in nginx-proxy): events passed on as they come, no read timeout.
    proxy_buffering off;
    proxy_read_timeout 1h;
@UPSTREAM_TLS@    server {
        listen 127.0.0.1:@WATCH_NGINX@ reuseport backlog=4096;
        # The client leg over TLS (--watch-client tls): the gateway's certificate.
        listen 127.0.0.1:@WATCH_NGINX_TLS@ ssl reuseport backlog=4096;
        ssl_certificate     cert.pem;
        ssl_certificate_key key.pem;
        location / { proxy_pass @UPSTREAM_SCHEME@://backend; }
    }
}
"""


def watch_request(path, port, token):
    """The watch request, as kubectl would send it."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
            f"Authorization: Bearer {token}\r\nUser-Agent: bench-watch\r\n\r\n").encode()


def probe_watch(port, path, token="", tls=False):
    """True when a watch through 127.0.0.1:port answers 200 and its first event (the set-up checks)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        sock.sendall(watch_request(path, port, token))
        data = b""
        while b'"ADDED"' not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.1 200") and b'"ADDED"' in data
    finally:
        sock.close()


def vm_rss_kib(pids):
    """VmRSS summed over `pids`, KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def fd_count(pids):
    """Open descriptors summed over `pids`."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def nofile_limit(pid):
    """A process's soft open-files limit as /proc/<pid>/limits shows it ("?" if unreadable)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


class StreamFailed(Exception):
    pass


def client_tls():
    """The TLS context of a watch client: the bench's throw-away certificates, unverified (as probe_watch)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


STREAM_TIMEOUT = 20.0  # for one stream's connect, head and first event


def first_event(data):
    """What the bytes of a watch's answer so far say: None (not enough yet), True (a 200 head and the first
    event, ADDED, are in), or StreamFailed raised."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, rest = data[:end + 4], data[end + 4:]
    status = head.split(b" ", 2)[1].decode(errors="replace")
    if status != "200":
        raise StreamFailed(f"status {status}")
    if b"chunked" not in head.lower():
        raise StreamFailed("not chunked")
    event = b""
    while b"\n" not in event:
        line_end = rest.find(b"\r\n")
        if line_end < 0:
            return None
        size = int(rest[:line_end].split(b";")[0], 16)
        if size == 0:
            raise StreamFailed("the watch ended")
        if len(rest) < line_end + 2 + size + 2:
            return None
        event += rest[line_end + 2:line_end + 2 + size]
        rest = rest[line_end + 2 + size + 2:]
    if b'"ADDED"' not in event:
        raise StreamFailed("the first event is not ADDED")
    return True


class WatchStream(asyncio.Protocol):
    """One watch stream from the client side: sends the request, resolves `opened` once the 200 head and
    the first event (ADDED) are in (or fails it), then stays open and idle. One parser over the bytes,
    no per-read timers: asyncio's streams and a wait_for per read cost the load CPU as much as the
    origin did, and that CPU bounds how fast the streams open."""

    def __init__(self, request, opened):
        self.request, self.opened, self.data = request, opened, b""
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        if self.opened.done():
            return
        self.data += data
        try:
            if first_event(self.data):
                self.opened.set_result(self)
                self.data = b""
        except (StreamFailed, ValueError, IndexError) as e:
            self.opened.set_exception(e if isinstance(e, StreamFailed) else StreamFailed(f"bad answer: {e}"))
            self.transport.close()

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(StreamFailed("closed before the first event"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self):
        self.transport.close()

    async def wait_closed(self):
        await self.closed


async def open_stream(port, request, sem, tls=None):
    """One watch stream: connect (over TLS when `tls` is a context), send the request, read the 200 head
    and the first event; the stream (its socket stays open, idle) or an exception."""
    async with sem:
        loop = asyncio.get_running_loop()
        opened = loop.create_future()
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                transport, _ = await loop.create_connection(lambda: WatchStream(request, opened), "127.0.0.1",
                                                            port, ssl=tls)
                try:
                    return await opened
                except BaseException:
                    transport.close()
                    raise
        except TimeoutError:
            raise StreamFailed(f"not open within {STREAM_TIMEOUT:.0f} s") from None


async def hold_streams(port, request, n, measure, tls=False):
    """Opens n watch streams (OPEN_CONCURRENCY at a time), lets them idle SETTLE seconds, calls `measure()`
    with all of them open, then closes them from the client side. (opened, errors by kind, seconds to
    open them all, what measure returned)."""
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    t0 = time.monotonic()
    ctx = client_tls() if tls else None
    tasks = [asyncio.ensure_future(open_stream(port, request, sem, ctx)) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=OPEN_TIMEOUT)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    open_secs = time.monotonic() - t0
    writers, errors = [], {}
    for t in done:
        if t.exception() is None:
            writers.append(t.result())
        else:
            e = t.exception()
            kind = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            errors[kind] = errors.get(kind, 0) + 1
    if pending:
        errors[f"not open within {OPEN_TIMEOUT:.0f} s"] = len(pending)
    await asyncio.sleep(SETTLE)
    reading = measure()
    for w in writers:
        w.close()
    closing = [asyncio.ensure_future(w.wait_closed()) for w in writers]
    if closing:
        await asyncio.wait(closing, timeout=10)
    return len(writers), errors, open_secs, reading


def socket_peers(pids, port):
    """How many of the processes' sockets are TCP connections to 127.0.0.1:port (from /proc/<pid>/fd and
    /proc/net/tcp): the upstream connections a proxy still holds to the watch origin."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    try:
        with open(f"/proc/{pids[0]}/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
                    count += 1
    except (OSError, IndexError, StopIteration):
        pass
    return count


def drain(pids_of, base_fds, slack, upstream_port):
    """Waits until the server's descriptors come back to base_fds + slack, or stay unchanged for
    STEADY seconds, or DRAIN_TIMEOUT passes: (how: back/steady/falling, seconds, fds, RSS KiB, of the fds
    the connections to the watch origin)."""
    t0 = last_change = time.monotonic()
    last = None
    while True:
        pids, now = pids_of(), time.monotonic()
        fds = fd_count(pids)
        if fds != last:
            last, last_change = fds, now
        how = ("back" if fds <= base_fds + slack else "steady" if now - last_change >= STEADY
               else "falling" if now - t0 > DRAIN_TIMEOUT else None)
        if how:
            return how, now - t0, fds, vm_rss_kib(pids), socket_peers(pids, upstream_port)
        time.sleep(0.1)


def streams_through(name, port, path, token, n, pids_of, holder, upstream_port, metric=None, tls=False):
    """n idle watch streams through one proxy: its RSS (VmRSS, summed over `pids_of()`) and descriptors
    before, with all n open (after a settling second), after the clients closed them, and after the origin
    ended the watches (SIGUSR1 to watch_holder.py)."""
    pids = pids_of()
    r = {"name": name, "n": n, "rss0": vm_rss_kib(pids), "fds0": fd_count(pids),
         "metric0": metric() if metric else None}

    def measure():
        ps = pids_of()
        return {"rss": vm_rss_kib(ps), "fds": fd_count(ps), "metric": metric() if metric else None}

    b.log(f"watch: opening {n:,} streams through {name} (RSS {r['rss0'] / 1024:.1f} MiB, {r['fds0']} fds)")
    r["open"], r["errors"], r["open_secs"], peak = asyncio.run(
        hold_streams(port, watch_request(path, port, token), n, measure, tls))
    r.update(rss1=peak["rss"], fds1=peak["fds"], metric=peak["metric"])
    r["per_stream"] = (r["rss1"] - r["rss0"]) / r["open"] if r["open"] else float("nan")
    slack = max(16, n // 100)
    r["closed"] = drain(pids_of, r["fds0"], slack, upstream_port)
    os.kill(holder.pid, signal.SIGUSR1)
    r["ended"] = drain(pids_of, r["fds0"], slack, upstream_port)
    b.log(f"  {r['open']:,} open in {r['open_secs']:.1f} s ({sum(r['errors'].values())} failed"
          + (f": {r['errors']}" if r["errors"] else "") + f"); RSS {r['rss1'] / 1024:.1f} MiB, "
          f"{r['per_stream']:.1f} KiB per stream; fds {r['fds0']} -> {r['fds1']}; after the clients closed: "
          f"{r['closed'][2]} fds ({r['closed'][0]}); after the origin ended the watches: {r['ended'][2]} fds "
          f"({r['ended'][0]}, {r['ended'][4]} to the watch origin)")
    return r


def proxy_metrics(port):
    """From the proxy's /metrics: {"streams": bcs_api_active_streams, "full"/"resumed": its upstream TLS
    handshakes so far}, or None."""
    try:
        status, body = b.http_get(port, "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    found = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("bcs_api_active_streams "):
            found["streams"] = int(float(line.split()[-1]))
        for kind in ("full", "resumed"):
            if line.startswith(f'bcs_api_upstream_tls_handshakes_total{{kind="{kind}"}}'):
                found[kind] = int(float(line.split()[-1]))
    return found


def stream_capacity(n, proxy_pid):
    """(streams, why fewer than n or ""): bcs-api-proxy needs two descriptors per stream (the client's and
    the upstream's) on top of those it holds; without CAP_SYS_RESOURCE bench.py cannot raise the hard
    RLIMIT_NOFILE its children inherit, so a low limit caps the streams instead of failing accept()."""
    limit = nofile_limit(proxy_pid)
    if not limit.isdigit():
        return n, ""
    # The same room for both proxies: an nginx worker also takes two per stream, plus its listeners, logs
    # and idle upstream connections, within the same limit.
    room = (int(limit) - max(fd_count([proxy_pid]), 64) - FD_SLACK) // 2
    if room >= n:
        return n, ""
    return max(1, room), (f"bcs-api-proxy's open-files limit is {limit} (the hard RLIMIT_NOFILE here; raising it "
                          f"takes CAP_SYS_RESOURCE), two per stream")


def watch(bench, n):
    """n concurrent idle watch streams through bcs-api-proxy, then through an nginx-proxy, each proxy's RSS
    per stream. The origin holds every watch open: watch_holder.py (asyncio, plain) behind a TLS nginx
    (the watch origin), which the gateway reaches as a second cluster; the client is asyncio in this
    process, on the proxies' plain ports (TLS ports with --watch-client tls), with the bench user's token."""
    a, d, g = bench.args, bench.dir, bench.main
    requested, n, why = n, *stream_capacity(n, bench.proxy_pid(g))
    if n < requested:
        b.log(f"watch: {n:,} streams instead of {requested:,}: {why}")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    holder_port, origin_port, origin_tls_port, proxy_port, proxy_tls_port = b.free_ports(5)
    # A worker takes two connections per stream (client and upstream). nginx starts closing idle client
    # connections ("worker_connections are not enough, reusing connections") once fewer than 1/16 of its
    # worker_connections are free, hence the headroom; it may exceed the open-files limit (a warning).
    wconn = 2 * n + n // 4 + 1024
    values = {"HOLDER": holder_port, "WATCH_ORIGIN": origin_port, "WATCH_ORIGIN_TLS": origin_tls_port,
              "WATCH_NGINX": proxy_port, "WATCH_NGINX_TLS": proxy_tls_port, "WCONN": wconn, "NOFILE": limit,
              "WORKERS": a.nginx_workers, "ORIGIN_WORKERS": WATCH_ORIGIN_WORKERS}
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    out = open(os.path.join(d, "logs", "watch-holder.out"), "wb")
    holder = bench.procs.start("watch holder", [sys.executable, os.path.join(b.HERE, "watch_holder.py"),
                                                str(holder_port)], stdout=out, stderr=subprocess.STDOUT)
    b.wait_until("watch holder", lambda: probe_watch(holder_port, WATCH_PATH), 10, holder)
    with open(os.path.join(d, "watch-origin.conf"), "w") as f:
        f.write(b.fill(WATCH_ORIGIN_CONF, values))
    # Their stderr (nginx's warning that worker_connections exceeds the open-files limit) goes to logs/.
    nginx_err = open(os.path.join(d, "logs", "watch-nginx.stderr"), "wb")
    origin = bench.procs.start("watch origin nginx", [nginx, "-p", d + "/", "-c", "watch-origin.conf", "-e",
                                                      "logs/watch-origin.err", "-g", "daemon off;"], cwd=d,
                               stderr=nginx_err)
    b.wait_until("watch origin nginx", lambda: probe_watch(origin_tls_port, WATCH_PATH, tls=True), 10, origin)

    scheme = bench.upstream_scheme
    identifier, _ = g.add_cluster("bench-watch", {"http": origin_port, "https": origin_tls_port}, [scheme])
    gw_path = f"/tunnels/clusters/{identifier}{WATCH_PATH}"
    b.wait_until("bcs-api-proxy serving the watch cluster",
                 lambda: probe_watch(g.plain_port, gw_path, g.user_token), 30, g.api)

    tls = scheme == "https"
    with open(os.path.join(d, "watch-proxy.conf"), "w") as f:
        f.write(b.fill(WATCH_PROXY_CONF, dict(values, UPSTREAM_SCHEME=scheme,
                                              UPSTREAM_PORT=origin_tls_port if tls else origin_port,
                                              UPSTREAM_TLS=b.UPSTREAM_TLS_CONF if tls else "")))
    ngx = bench.procs.start("watch nginx-proxy", bench.pinned_argv(
        [nginx, "-p", d + "/", "-c", "watch-proxy.conf", "-e", "logs/watch-proxy.err", "-g", "daemon off;"]), cwd=d,
        stderr=nginx_err)
    b.wait_until("watch nginx-proxy", lambda: probe_watch(proxy_port, WATCH_PATH, g.user_token), 10, ngx)

    t0 = time.monotonic()
    client_tls_leg = a.watch_client == "tls"
    res = {"n": n, "requested": requested, "capped": why, "proxy_nofile": nofile_limit(bench.proxy_pid(g)),
           "scheme": scheme, "client": a.watch_client}
    upstream_port = origin_tls_port if tls else origin_port
    res["bcs-proxy"] = streams_through("bcs-api-proxy", g.tls_port if client_tls_leg else g.plain_port, gw_path,
                                       g.user_token, n, lambda: [bench.proxy_pid(g)], holder, upstream_port,
                                       lambda: proxy_metrics(g.metric_port), client_tls_leg)
    res["nginx-proxy"] = streams_through("nginx-proxy", proxy_tls_port if client_tls_leg else proxy_port,
                                         WATCH_PATH, g.user_token, n, lambda: b.children(ngx.pid), holder,
                                         upstream_port, None, client_tls_leg)
    res["secs"] = time.monotonic() - t0
    for p in (ngx, origin, holder):
        bench.procs.stop(p)
    out.close()
    nginx_err.close()
    return res


def watch_table(bench):
    """The watch scenario's tables: RSS per stream against the target and nginx, then the clean-up."""
    r = bench.extra["watch"]
    bcs, ngx = r["bcs-proxy"], r["nginx-proxy"]
    mark = lambda v: "met" if v <= STREAM_TARGET_KIB else "**missed**"

    def mib(kib):
        return f"{kib / 1024:,.1f}"

    def after(x, base):
        how, secs, fds, rss, upstream = x
        when = {"back": f"back within {secs:.1f} s", "steady": f"**unchanged for {STEADY:.0f} s**",
                "falling": f"still falling after {secs:.1f} s"}[how]
        return (f"{fds:,} fds ({fds - base:+,}; {upstream:,} to the watch origin), {when}; "
                f"RSS {mib(rss)} MiB")

    out = ["| proxy | streams open | failed | opened in s | RSS before MiB | RSS with the streams MiB | "
           "RSS per stream KiB | ratio to nginx | descriptors before → with | "
           f"target ≤ {STREAM_TARGET_KIB:.0f} KiB per stream |",
           "|---|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for x in (bcs, ngx):
        failed = ", ".join(f"{k} × {v}" for k, v in x["errors"].items()) or "0"
        is_bcs = x is bcs
        out.append(f"| {x['name']} | {x['open']:,} of {x['n']:,} | {failed} | {x['open_secs']:.1f} | {mib(x['rss0'])} | "
                   f"{mib(x['rss1'])} | {x['per_stream']:.1f} | "
                   f"{b.ratio(x['per_stream'], ngx['per_stream']) if is_bcs else '1.00×'} | "
                   f"{x['fds0']:,} → {x['fds1']:,} | "
                   f"{(str(round(x['per_stream'], 1)) + ' ' + mark(x['per_stream'])) if is_bcs else '–'} |")
    out += ["", "| proxy | after the clients closed their streams | after the origin then ended the watches |",
            "|---|---|---|"]
    for x in (bcs, ngx):
        out.append(f"| {x['name']} | {after(x['closed'], x['fds0'])} | {after(x['ended'], x['fds0'])} |")
    metric = ""
    m0, m1 = bcs["metric0"] or {}, bcs["metric"] or {}
    if "streams" in m1:
        metric = f"; the proxy's `bcs_api_active_streams` with all open: {m1['streams']:,}"
    if all(k in m0 and k in m1 for k in ("full", "resumed")):
        full, resumed = m1["full"] - m0["full"], m1["resumed"] - m0["resumed"]
        metric += (f"; its TLS handshakes with the watch origin while opening them "
                   f"(`bcs_api_upstream_tls_handshakes_total`): {full:,} full, {resumed:,} resumed from a ticket")
    out += ["", f"Each stream: `GET /tunnels/clusters/<watch cluster>{WATCH_PATH}` (nginx-proxy: `{WATCH_PATH}`) "
            f"on the proxy's {'TLS port (`--watch-client tls`)' if r['client'] == 'tls' else 'plain port'} "
            f"with the bench user's token, from asyncio in bench.py, "
            f"{OPEN_CONCURRENCY} being opened at a time; each read its 200 head and its first event (ADDED) and "
            f"then stayed idle. The origin: watch_holder.py (asyncio) holding every watch open, behind an nginx "
            f"on {'TLS' if r['scheme'] == 'https' else 'plain HTTP'} (a second cluster of the gateway); nginx-proxy "
            f"is a separate nginx with nginx-proxy's settings plus `proxy_buffering off` and `proxy_read_timeout "
            f"1h`, {bench.args.nginx_workers} worker(s). RSS is VmRSS from /proc (nginx: the sum over its workers), "
            f"read {SETTLE:.0f} s after the last stream opened; per stream = (with − before) / streams open. "
            f"bcs-api-proxy's open-files limit: {r['proxy_nofile']}{metric}. After the close, the script waits "
            f"until the descriptors are back to the count before (give or take 1 % of the streams, at least 16), "
            f"or stay unchanged for "
            f"{STEADY:.0f} s; the signed figure is over the count before, and the connections to the watch origin "
            f"among them are upstream connections still open (after the watches ended, a proxy may keep some "
            f"as idle keep-alive connections). {r['secs']:.0f} s in all."]
    if r["capped"]:
        out += ["", f"**{r['n']:,} streams, not the {r['requested']:,} asked for**: {r['capped']}."]
    return "\n".join(out)
