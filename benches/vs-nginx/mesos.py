"""The mesos route's set-up for bench.py: a ZooKeeper from Debian's zookeeper package and one
mesos-driver node pointing at the origin nginx, so that bcs-api's discovery puts the driver in
the proxy's snapshot. Python 3 stdlib only; the driver node is written with the package's
zkCli.sh (persistent, not ephemeral: it only has to outlive the run, in a throwaway ZooKeeper).

The origin serves /mesosdriver/v4/<size> (the same files as /<size>); bcs-api-proxy gets
`/bcsapi/v4/scheduler/mesos/<size>` with `BCS-ClusterID: <cluster>` and forwards it there,
nginx-proxy gets `/mesosdriver/v4/<size>` and passes it on as it is.
"""
import json
import os
import socket
import subprocess
import time

JAR = "/usr/share/java/zookeeper.jar"
SLF4J_SIMPLE = "/usr/share/java/slf4j-simple.jar"
ZKCLI = "/usr/share/zookeeper/bin/zkCli.sh"
DRIVERS = "/bcs/services/endpoints/mesosdriver"


def available():
    """None when ZooKeeper can run here, else why not."""
    missing = [p for p in (JAR, ZKCLI) if not os.path.exists(p)]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install -y zookeeper)"
    return None


def start_zookeeper(procs, d, port):
    """Starts a standalone ZooKeeper on 127.0.0.1:port with its data under d/zk; returns its process."""
    data = os.path.join(d, "zk")
    os.makedirs(data, exist_ok=True)
    config = os.path.join(data, "zoo.cfg")
    with open(config, "w") as f:
        f.write(f"tickTime=500\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
                "maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=ruok\n")
    classpath = JAR + (":" + SLF4J_SIMPLE if os.path.exists(SLF4J_SIMPLE) else "")
    argv = ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dzookeeper.jmx.log4j.disable=true",
            "-cp", classpath, "org.apache.zookeeper.server.ZooKeeperServerMain", config]
    log = open(os.path.join(data, "zookeeper.log"), "ab")
    proc = procs.start("zookeeper", argv, cwd=data, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not _ruok(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ZooKeeper did not start; see {data}/zookeeper.log")
        time.sleep(0.2)
    return proc


def _ruok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"ruok")
            return s.recv(4) == b"imok"
    except OSError:
        return False


def register_driver(zk_port, cluster_id, ip, port):
    """Writes one mesos-driver node (ServerInfo JSON, http) for cluster_id under DRIVERS."""
    info = json.dumps({"ip": ip, "port": port, "metric_port": 0, "hostname": "bench-origin", "scheme": "http",
                       "version": "bench", "cluster": cluster_id, "pid": os.getpid()}, separators=(",", ":"))
    parts = DRIVERS.strip("/").split("/") + [cluster_id]
    commands = [f"create /{'/'.join(parts[:i])} \"\"" for i in range(1, len(parts) + 1)]
    commands.append(f"create -s /{'/'.join(parts)}/_c_bench0000000000000000-{ip} '{info}'")
    commands.append(f"ls /{'/'.join(parts)}")
    # On a fresh machine the first run once connected and printed no command's output (its stderr
    # was not kept then; it is in the error now), and the same commands then worked by hand. So
    # try again: a node that exists already is only reported, and the listing is the check.
    for attempt in range(1, 4):
        run = subprocess.run([ZKCLI, "-server", f"127.0.0.1:{zk_port}"], input="\n".join(commands) + "\nquit\n",
                             capture_output=True, text=True, timeout=60)
        if f"_c_bench0000000000000000-{ip}" in run.stdout:
            return
        time.sleep(attempt)
    raise RuntimeError(f"the driver node was not created after {attempt} tries:\n{run.stdout[-1500:]}\n"
                       f"--- stderr\n{run.stderr[-1500:]}")
