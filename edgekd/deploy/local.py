"""Start, use and stop a secured Flower deployment (SuperLink + SuperNodes) on one machine.

:class:`LocalDeployment` runs Flower's deployment runtime exactly as it runs across machines,
only with every process on this host:

- ``flower-superlink`` with TLS (``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile``), SuperNode
  authentication (``--enable-supernode-auth``) and runtime dependency installation off, on a
  free port of ``127.0.0.1`` (Fleet, Control and Runtime APIs share that one port);
- a private ``FLWR_HOME`` whose ``config.toml`` holds a TLS connection to it
  (``root-certificates = <ca.crt>``), so ``flwr`` commands never touch ``~/.flwr``;
- SuperNode public keys registered with ``flwr supernode register``;
- one ``flower-supernode`` per device, each with its own port, ``FLWR_HOME``, log file,
  ``--node-config`` and ``--auth-supernode-private-key``;
- ``flwr run APP <connection> --stream``, the run's final status read with
  ``flwr ls --format json`` (``flwr run --stream`` exits 0 even when the run failed);
- on exit, error or Ctrl-C: every process it started, and everything those started (SuperExec,
  ServerApp and ClientApp processes, which Flower starts in sessions of their own), is stopped
  by PID: SIGTERM, then SIGKILL after a grace period.

Insecure mode (no TLS, no node authentication) is available only when asked for with
``insecure=True``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, TextIO

from flwr.common.logger import log

from edgekd.deploy.certs import DevCredentials
from edgekd.launch import run_config_arguments
from edgekd.processes import (
    alive_flower_processes,
    descendants,
    flower_env,
    free_port,
    process_table,
    signal_all,
    stop_process,
)

__all__ = [
    "CONNECTION",
    "DeploymentError",
    "LocalDeployment",
    "ManagedProcess",
    "RunResult",
    "alive_flower_processes",
    "format_node_config",
]

CONNECTION = "edgekd-deploy"
COMPLETED = "finished:completed"
_STARTED_RUN = re.compile(r"started run (\d+)")


class DeploymentError(RuntimeError):
    """A SuperLink or SuperNode could not be started, or a Flower CLI command failed."""


@dataclass
class ManagedProcess:
    """A process started by :class:`LocalDeployment` (it leads its own process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class RunResult:
    """Outcome of one ``flwr run``.

    Attributes
    ----------
    run_id : int or None
        The run id reported by ``flwr run`` (None if it never started).
    status : str
        Final status from ``flwr ls`` (``finished:completed`` on success).
    details : str
        Flower's status details (the error of a failed ServerApp).
    returncode : int
        Exit code of ``flwr run`` (124 when it was stopped at the timeout).
    output : str
        Everything ``flwr run --stream`` printed (ServerApp logs included).
    """

    run_id: int | None
    status: str
    details: str
    returncode: int
    output: str = field(repr=False, default="")

    @property
    def ok(self) -> bool:
        """True when the run finished as completed."""
        return self.returncode == 0 and self.status == COMPLETED


def format_node_config(values: Mapping[str, Any]) -> str:
    """``{"partition-id": 0, "npz-path": "/d/x.npz"}`` -> ``partition-id=0 npz-path="/d/x.npz"``.

    Strings are written as TOML strings (JSON escaping), the format ``--node-config`` parses.
    """
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class LocalDeployment:
    """A SuperLink and SuperNodes on ``127.0.0.1``, secured unless ``insecure=True``.

    Use as a context manager; leaving it (normally, on an exception or on Ctrl-C) stops every
    process it started::

        creds = generate_dev_credentials(work / "certs", num_nodes=2)
        with LocalDeployment(work, credentials=creds) as dep:
            for i, (key, pub) in enumerate(creds.node_keys):
                dep.register_node(pub)
                dep.start_supernode({"partition-id": i, "num-partitions": 2}, key)
            dep.wait_for_nodes(2)
            result = dep.run(".", ["num-partitions=2 num-server-rounds=2"])

    Parameters
    ----------
    workdir : str | Path
        Receives the private ``FLWR_HOME`` (``flwr-home/``, with the SuperLink's database),
        one ``FLWR_HOME`` per SuperNode and the logs: ``superlink.log``,
        ``supernode-<name>.log``, ``flwr-run-<n>.log``.
    credentials : DevCredentials, optional
        TLS certificate/key of the SuperLink and the CA that signed it; required unless
        ``insecure``.
    insecure : bool, optional
        No TLS and no SuperNode authentication. Only for debugging; must be asked for.
    startup_timeout : float, optional
        Seconds the SuperLink gets to become healthy.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        credentials: DevCredentials | None = None,
        insecure: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        if credentials is None and not insecure:
            raise ValueError(
                "a deployment needs TLS credentials (see `python -m edgekd.deploy certs`); "
                "pass insecure=True to run without TLS and node authentication"
            )
        if credentials is not None and insecure:
            raise ValueError("give either credentials or insecure=True, not both")
        self.workdir = Path(workdir).expanduser().resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(exist_ok=True)
        self.credentials = credentials
        self.insecure = insecure
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.superlink: ManagedProcess | None = None
        self.supernodes: list[ManagedProcess] = []
        self._others: list[ManagedProcess] = []
        self._seen: set[int] = set()
        self._runs = 0

    # ------------------------------------------------------------------ helpers
    @property
    def address(self) -> str:
        """``127.0.0.1:<port>`` of the SuperLink (all its APIs)."""
        if self.port is None:
            raise DeploymentError("the SuperLink is not started")
        return f"{self.host}:{self.port}"

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        """Environment for Flower executables: this venv's bin first, a private FLWR_HOME."""
        return flower_env(flwr_home or self.flwr_home)

    def _executable(self, name: str) -> str:
        return str(Path(sys.executable).with_name(name))

    def _spawn(
        self, name: str, command: list[str], log_file: Path, env: Mapping[str, str]
    ) -> ManagedProcess:
        with log_file.open("ab") as handle:
            popen = subprocess.Popen(
                command,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )
        process = ManagedProcess(name, popen, log_file)
        self._seen.add(process.pid)
        log(INFO, "edgekd.deploy: started %s (pid %s), log %s", name, process.pid, log_file)
        return process

    def _write_connection(self) -> None:
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f'address = "{self.address}"',
        ]
        if self.credentials is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(self.credentials.ca_cert))}")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_healthy(self) -> None:
        import httpx

        assert self.superlink is not None
        if self.credentials is None:
            url, verify = f"http://{self.address}/health", True
        else:
            url = f"https://{self.address}/health"
            verify = ssl.create_default_context(cafile=str(self.credentials.ca_cert))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.superlink.popen.poll() is not None:
                raise DeploymentError(
                    f"flower-superlink exited with code {self.superlink.popen.returncode}:\n"
                    f"{self.superlink.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0, verify=verify, trust_env=False).is_success:
                    return
            time.sleep(0.3)
        raise DeploymentError(
            f"flower-superlink did not become healthy within {self.startup_timeout:.0f} s:\n"
            f"{self.superlink.log_tail()}"
        )

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this deployment's private ``FLWR_HOME``."""
        return subprocess.run(
            [self._executable("flwr"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.workdir,
        )

    def _flwr_json(self, *args: str) -> dict[str, Any]:
        done = self.flwr(*args, "--format", "json")
        try:
            payload = json.loads(done.stdout[done.stdout.find("{") :])
        except json.JSONDecodeError:
            payload = {}
        if done.returncode != 0 or not payload.get("success", False):
            raise DeploymentError(
                f"`flwr {' '.join(args)}` failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()}"
            )
        return payload

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalDeployment:
        """Start the SuperLink, wait until it is healthy and write the connection."""
        if self.superlink is not None:
            return self
        self.port = free_port()
        command = [
            self._executable("flower-superlink"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--database",
            str(self.flwr_home / "state.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.credentials is None:
            command.append("--insecure")
        else:
            command += [
                "--ssl-certfile",
                str(self.credentials.server_cert),
                "--ssl-keyfile",
                str(self.credentials.server_key),
                "--ssl-ca-certfile",
                str(self.credentials.ca_cert),
                "--enable-supernode-auth",
            ]
        self.superlink = self._spawn(
            "superlink", command, self.workdir / "superlink.log", self.env()
        )
        self._wait_healthy()
        self._write_connection()
        log(
            INFO,
            "edgekd.deploy: SuperLink on %s (%s)",
            self.address,
            "INSECURE: no TLS, no node authentication"
            if self.credentials is None
            else "TLS, SuperNode authentication on",
        )
        return self

    def register_node(self, public_key: str | Path) -> int:
        """Register a SuperNode's public key (``flwr supernode register``); return its node id."""
        if self.credentials is None:
            raise DeploymentError("node authentication is off in insecure mode")
        payload = self._flwr_json(
            "supernode", "register", str(Path(public_key).resolve()), CONNECTION
        )
        return int(payload["node-id"])

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: every registered node with its ``status``."""
        return list(self._flwr_json("supernode", "list", CONNECTION).get("nodes", []))

    def start_supernode(
        self,
        node_config: Mapping[str, Any] | str,
        private_key: str | Path | None = None,
        *,
        name: str | None = None,
        max_retries: int | None = None,
    ) -> ManagedProcess:
        """Start one ``flower-supernode`` connected to the SuperLink.

        Parameters
        ----------
        node_config : mapping or str
            Its ``--node-config`` (``partition-id``, ``num-partitions``, ``npz-path`` ...).
        private_key : str | Path, optional
            Its authentication key (``--auth-supernode-private-key``); required with TLS.
        name : str, optional
            Names its log ``supernode-<name>.log`` and ``FLWR_HOME``; default: its index.
        max_retries : int, optional
            ``--max-retries`` (default: Flower's, unlimited reconnection attempts).
        """
        if self.superlink is None:
            self.start()
        if self.credentials is not None and private_key is None:
            raise ValueError("with TLS and node authentication every SuperNode needs its key")
        name = name or str(len(self.supernodes))
        home = self.workdir / f"supernode-{name}"
        home.mkdir(exist_ok=True)
        config = node_config if isinstance(node_config, str) else format_node_config(node_config)
        command = [
            self._executable("flower-supernode"),
            "--superlink",
            self.address,
            "--host",
            self.host,
            "--port",
            str(free_port()),
            "--node-config",
            config,
        ]
        if self.credentials is None:
            command.append("--insecure")
        else:
            command += [
                "--root-certificates",
                str(self.credentials.ca_cert),
                "--auth-supernode-private-key",
                str(Path(str(private_key)).resolve()),
            ]
        if max_retries is not None:
            command += ["--max-retries", str(max_retries)]
        process = self._spawn(
            f"supernode-{name}", command, self.workdir / f"supernode-{name}.log", self.env(home)
        )
        self.supernodes.append(process)
        return process

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Wait until ``count`` SuperNodes are online; fail early if a SuperNode exits."""
        deadline = time.monotonic() + timeout
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for node in self.supernodes:
                code = node.popen.poll()
                if code is not None and code != 0:
                    raise DeploymentError(
                        f"{node.name} exited with code {code}:\n{node.log_tail()}"
                    )
            online = [n for n in self.list_nodes() if n.get("status") == "online"]
            if len(online) >= count:
                return online
            time.sleep(1.0)
        raise DeploymentError(
            f"{len(online)}/{count} SuperNodes online after {timeout:.0f} s:\n"
            + "\n".join(f"--- {n.name}\n{n.log_tail(10)}" for n in self.supernodes)
        )

    def run(
        self,
        app: str | Path = ".",
        run_config: Sequence[str] = (),
        *,
        timeout: float | None = None,
        stream: TextIO | None = None,
    ) -> RunResult:
        """``flwr run APP <connection> --stream``; return the run's final status.

        Relative ``npz-path``/``data-dir``/``output-dir`` of the effective run config are made
        absolute (the apps run from Flower's copy of the app). ``stream`` receives the
        streamed output (ServerApp logs) as it comes. At ``timeout`` seconds the run is
        stopped (``flwr stop``) and reported with ``returncode`` 124.
        """
        app_dir = Path(app).resolve()
        command = [self._executable("flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        command += run_config_arguments(app_dir, run_config)
        self._runs += 1
        log_file = self.workdir / f"flwr-run-{self._runs}.log"
        log(INFO, "edgekd.deploy: %s", shlex.join(command))
        process = self._spawn(f"flwr-run-{self._runs}", command, log_file, self.env())
        self._others.append(process)
        returncode = self._follow(process, log_file, timeout, stream)
        output = log_file.read_text(errors="replace")
        match = _STARTED_RUN.search(output)
        run_id = int(match.group(1)) if match else None
        if returncode == 124 and run_id is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.flwr("stop", str(run_id), CONNECTION, timeout=60)
        status, details = self._final_status(run_id)
        result = RunResult(run_id, status, details, returncode, output)
        level = INFO if result.ok else WARNING
        log(level, "edgekd.deploy: run %s ended: %s %s", run_id, status, details)
        return result

    def _follow(
        self,
        process: ManagedProcess,
        log_file: Path,
        timeout: float | None,
        stream: TextIO | None,
    ) -> int:
        """Wait for ``flwr run`` (echoing its log to ``stream``); 124 on timeout."""
        stop = threading.Event()

        def tail() -> None:
            with log_file.open(errors="replace") as handle:
                while True:
                    line = handle.readline()
                    if line:
                        if stream is not None:
                            stream.write(line)
                            stream.flush()
                    elif stop.is_set():
                        return
                    else:
                        time.sleep(0.2)

        def watch() -> None:
            # Remember every PID below our processes: ServerApp/ClientApp processes live
            # only a few seconds and must be gone after stop().
            while not stop.wait(1.0):
                self._remember_descendants()

        threads = [threading.Thread(target=tail, daemon=True)]
        threads.append(threading.Thread(target=watch, daemon=True))
        for thread in threads:
            thread.start()
        try:
            return process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(process.popen)
            return 124
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)

    def _final_status(self, run_id: int | None) -> tuple[str, str]:
        """Status and details of ``run_id`` from ``flwr ls --format json`` (waits for the end)."""
        if run_id is None:
            return "not-started", "flwr run did not report a run id"
        deadline = time.monotonic() + 30
        status, details = "unknown", ""
        while True:
            try:
                payload = self._flwr_json("ls", CONNECTION, "--run-id", str(run_id))
            except DeploymentError as err:
                return "unknown", str(err)
            runs = payload.get("runs", [])
            if runs:
                status = str(runs[0].get("status", ""))
                details = str(runs[0].get("status-details", ""))
            if status.startswith("finished") or time.monotonic() > deadline:
                return status, details
            time.sleep(1.0)

    def all_alive(self) -> bool:
        """True while the SuperLink and every SuperNode are running."""
        nodes = [self.superlink, *self.supernodes]
        return all(p is not None and p.popen.poll() is None for p in nodes)

    def _roots(self) -> list[ManagedProcess]:
        roots = [*self._others, *self.supernodes]
        if self.superlink is not None:
            roots.append(self.superlink)
        return roots

    def _remember_descendants(self) -> set[int]:
        table = process_table()
        found = descendants([p.pid for p in self._roots()], table)
        self._seen |= found
        return found

    @property
    def started_pids(self) -> set[int]:
        """Every PID this deployment started or saw below its processes so far."""
        self._remember_descendants()
        return set(self._seen)

    def stop(self) -> None:
        """Stop everything: ``flwr run``, SuperNodes, then the SuperLink; then any leftover.

        Each started process is SIGTERMed with its process group and SIGKILLed after 20 s;
        descendants in other process groups (SuperExec, ServerApp, ClientApp) get the same
        treatment afterwards, by PID.
        """
        remembered = self._remember_descendants()
        for process in self._roots():
            stop_process(process.popen)
        table = process_table()
        leftover = {pid for pid in remembered | descendants([p.pid for p in self._roots()], table)}
        leftover = set(alive_flower_processes(leftover))
        if leftover:
            signal_all(leftover, table, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while leftover and time.monotonic() < deadline:
                time.sleep(0.2)
                leftover = set(alive_flower_processes(leftover))
            if leftover:
                signal_all(leftover, table, signal.SIGKILL)
        self.supernodes.clear()
        self._others.clear()
        self.superlink = None

    def __enter__(self) -> LocalDeployment:
        """Start the SuperLink."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        """Stop everything, whatever happened."""
        self.stop()
