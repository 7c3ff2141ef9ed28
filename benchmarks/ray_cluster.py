"""A two-node Ray cluster on 127.0.0.1 running an edgekd simulation, then stopped.

Flower's simulation engine calls ``ray.init()`` (``RayBackend.init_ray``); Ray joins an existing
cluster when ``RAY_ADDRESS`` is set in the environment of the process that runs the simulation
(the SuperLink started by ``python -m edgekd.launch`` passes its environment on). Flower's
``init-args`` cannot carry an address. This script:

1. starts a head node with ``ray start --head --node-ip-address=127.0.0.1 --num-cpus=1
   --port=<free>`` and a worker node with ``ray start --address=127.0.0.1:<port>
   --node-ip-address=127.0.0.1 --num-cpus=1`` (both ``--block``, in their own process groups,
   with a private ``--temp-dir`` so that no other Ray user on this machine finds them);
2. checks that the cluster has two alive nodes and that every socket its processes listen on is
   bound to 127.0.0.1;
3. runs ``python -m edgekd.launch`` (FedAvg on the embedded digits data, 4 virtual clients of
   1 CPU each, 2 rounds) with ``RAY_ADDRESS=127.0.0.1:<port>``, and records on which node each
   virtual client (Ray actor ``ClientAppActor``) ran and which partitions it trained;
4. stops both nodes (their process groups; ``ray stop`` would also stop every other Ray
   instance of this machine) and removes the temporary directory, also on failure.

Loopback only: ``ray start`` replaces ``127.0.0.1`` by the machine's network address (Ray's
``resolve_ip_for_localhost``) and then listens on all interfaces. Ray's servers listen on
127.0.0.1 only when the node address *is* ``127.0.0.1``, so the two ``ray start`` commands run
through ``--ray-cli``, which is Ray's own CLI with that replacement switched off, and drivers get
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so that they, too, call this machine 127.0.0.1. On
machines that really form a cluster neither is needed: use the network address.

Usage::

    python benchmarks/ray_cluster.py              # writes benchmarks/ray_cluster.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    HERE,
    PYTHON,
    ROOT,
    bench_env,
    descendants,
    machine,
    process_name,
    run_timed,
    stop_on_sigterm,
    today,
    write_json,
)

LOOPBACK = "127.0.0.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ACTOR_LINE = re.compile(r"\(ClientAppActor pid=(\d+)[^)]*\).*partition (\d+): trained")
SIMULATION = (
    'strategy="fedavg" dataset="digits" model="cnn" partitioner="iid" num-partitions=4 '
    "num-server-rounds=2 local-epochs=1 batch-size=32 lr=0.05 fraction-train=1.0"
)


def ray_cli(argv: list[str]) -> int:
    """Ray's own ``ray`` command line, keeping ``--node-ip-address=127.0.0.1`` as given."""
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *argv]
    ray_main()
    return 0


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class RayNode:
    """One ``ray start --block`` process (and everything it starts), in its own group."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._file = log.open("w")
        self.process = subprocess.Popen(
            [PYTHON, str(Path(__file__).resolve()), "--ray-cli", "start", *args, "--block"],
            cwd=ROOT,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self._environment(),
        )

    @staticmethod
    def _environment() -> dict[str, str]:
        # `ray start` of a worker node refuses to run when this variable is 0 (drivers need it)
        env = bench_env(1)
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        return env

    def wait_started(self, timeout: float = 180.0) -> None:
        """Wait for Ray's "Ray runtime started." line; raise if the process died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ray runtime started." in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"ray {self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The ``ray start`` process and its descendants, now."""
        return descendants(self.process.pid)

    def raylet(self) -> int | None:
        """PID of this node's raylet."""
        for pid in self.pids():
            if "/raylet " in process_name(pid) or process_name(pid).endswith("/raylet"):
                return pid
        return None

    def stop(self) -> None:
        """SIGTERM the node's process group, then SIGKILL whatever is left of it."""
        pids = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._file.close()


def listening_sockets(pids: set[int]) -> list[dict[str, Any]]:
    """TCP sockets in LISTEN state owned by ``pids`` (from ``ss -ltnpH``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        owners = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        mine = [p for p in owners if p in pids]
        if mine:
            fields = line.split()
            found.append({"address": fields[3], "pid": mine[0], "process": fields[-1][:60]})
    return found


def is_loopback(address: str) -> bool:
    """``127.0.0.1:port`` or its IPv4-mapped IPv6 form."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in {LOOPBACK, "::ffff:127.0.0.1"}


def cluster_nodes(address: str) -> list[dict[str, Any]]:
    """Alive nodes of the cluster at ``address`` (connects as a short-lived driver)."""
    import ray

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        return [
            {
                "node_id": node["NodeID"],
                "address": node["NodeManagerAddress"],
                "alive": bool(node["Alive"]),
                "cpus": node["Resources"].get("CPU", 0.0),
                "raylet_socket": node.get("RayletSocketName", ""),
            }
            for node in ray.nodes()
        ]
    finally:
        ray.shutdown()


class ActorWatcher:
    """Records which node's raylet each ``ray::ClientAppActor`` process was started by."""

    def __init__(self, nodes: list[RayNode]) -> None:
        self.nodes = nodes
        self.node_of_pid: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            for node in self.nodes:
                for pid in node.pids():
                    if process_name(pid).startswith("ray::ClientAppActor"):
                        self.node_of_pid[pid] = node.name

    def __enter__(self) -> ActorWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--ray-cli"]:
        return ray_cli(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=HERE / "ray_cluster.json")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp_dir = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    port = free_port()
    address = f"{LOOPBACK}:{port}"
    common_args = [
        f"--node-ip-address={LOOPBACK}",
        "--num-cpus=1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    head_args = [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}",
    ]
    nodes: list[RayNode] = []
    result: dict[str, Any] = {
        "command": "python benchmarks/ray_cluster.py " + " ".join(argv),
        "date": today(),
        "machine": machine(),
        "address": address,
        "head_command": f"ray start --head --node-ip-address=127.0.0.1 --port={port} "
        "--num-cpus=1 --include-dashboard=false --block",
        "worker_command": f"ray start --address={address} --node-ip-address=127.0.0.1 "
        "--num-cpus=1 --block",
    }
    started = time.monotonic()
    try:
        nodes.append(RayNode("head", [*head_args, *common_args], temp_dir / "head.log"))
        nodes[0].wait_started()
        nodes.append(
            RayNode("worker", [f"--address={address}", *common_args], temp_dir / "worker.log")
        )
        nodes[1].wait_started()
        result["cluster_start_s"] = time.monotonic() - started
        result["nodes"] = cluster_nodes(address)
        owned = {pid for node in nodes for pid in node.pids()}
        sockets = listening_sockets(owned)
        result["listening"] = sockets
        result["all_listening_on_loopback"] = all(is_loopback(s["address"]) for s in sockets)
        env = bench_env(
            1,
            RAY_ADDRESS=address,
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_DEDUP_LOGS="0",
        )
        with ActorWatcher(nodes) as watcher:
            run = run_timed(
                [
                    PYTHON,
                    "-m",
                    "edgekd.launch",
                    str(ROOT),
                    "--run-config",
                    f"{SIMULATION} output-dir='{temp_dir / 'runs'}'",
                    "--federation-config",
                    "num-supernodes=4 client-resources-num-cpus=1",
                ],
                env=env,
                timeout=args.timeout,
            )
        owned |= {pid for node in nodes for pid in node.pids()}
        late = listening_sockets(owned)
        result["all_listening_on_loopback"] = result["all_listening_on_loopback"] and all(
            is_loopback(s["address"]) for s in late
        )
        trained: dict[str, list[int]] = {}
        seen: set[str] = set()
        for _, line in run.lines:
            match = ACTOR_LINE.search(line)
            # an actor's line can reach the stream twice (Ray's log forwarding and Flower's)
            key = ANSI.sub("", line[match.start() :]).strip() if match else ""
            if match and key not in seen:
                seen.add(key)
                node = watcher.node_of_pid.get(int(match.group(1)), "unknown")
                trained.setdefault(node, []).append(int(match.group(2)))
        result["simulation"] = {
            "run_config": SIMULATION,
            "returncode": run.returncode,
            "wall_s": run.wall_s,
            "actors_started_by_this_cluster": bool(watcher.node_of_pid),
            "actors": {str(pid): node for pid, node in sorted(watcher.node_of_pid.items())},
            "partitions_trained_by_node": {k: sorted(v) for k, v in sorted(trained.items())},
        }
        result["clients_on_both_nodes"] = {"head", "worker"} <= set(trained)
        if run.returncode != 0:
            result["simulation"]["output_tail"] = run.text()[-3000:]
    finally:
        for node in reversed(nodes):
            node.stop()
        leftovers = [
            pid
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit())
            if str(temp_dir) in process_name(pid)
        ]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        result["stopped"] = {
            "processes_left_after_stop": leftovers,
            "ports_still_listening": listening_sockets(set(leftovers)) if leftovers else [],
        }
        shutil.rmtree(temp_dir, ignore_errors=True)
        result["total_s"] = time.monotonic() - started
        write_json(args.out, result)
    print(
        f"nodes {len(result.get('nodes', []))}, clients on both nodes: "
        f"{result.get('clients_on_both_nodes')}, loopback only: "
        f"{result.get('all_listening_on_loopback')}, "
        f"partitions by node: {result.get('simulation', {}).get('partitions_trained_by_node')}"
    )
    ok = result.get("clients_on_both_nodes") and result.get("all_listening_on_loopback")
    return 0 if ok else 1


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
