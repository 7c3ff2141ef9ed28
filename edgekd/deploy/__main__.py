"""``python -m edgekd.deploy``: certificates and a secured local Flower deployment.

Commands::

    python -m edgekd.deploy certs OUT_DIR [--nodes 2] [--host 127.0.0.1 --host localhost]
        Write a development CA, the SuperLink's TLS certificate and SuperNode key pairs.

    python -m edgekd.deploy run [APP] [--run-config FILE_OR_PAIRS ...] [--nodes N]
                            [--node-data NPZ ...] [--certs DIR | --insecure]
                            [--workdir DIR] [--timeout SECONDS]
        Start a SuperLink (TLS, SuperNode authentication) and N SuperNodes on 127.0.0.1,
        register the nodes' keys, run the app with `flwr run --stream`, report the run's
        final status (exit 1 unless finished:completed) and stop every process.

    python -m edgekd.deploy up [--nodes N] [--node-data NPZ ...] [--certs DIR | --insecure]
                           [--workdir DIR]
        The same deployment without a run: it prints the FLWR_HOME and the `flwr run`
        command to use, and stays up until Ctrl-C (or SIGTERM), then stops everything.

N defaults to the run's num-partitions (run) or 2 (up); node i gets
--node-config "partition-id=i num-partitions=N" plus npz-path="<the i-th --node-data>" when
given. Without --certs, fresh development credentials are written to WORKDIR/certs.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edgekd.deploy.certs import (
    DEFAULT_HOSTS,
    DevCredentials,
    generate_dev_credentials,
    generate_node_key,
)
from edgekd.deploy.local import CONNECTION, DeploymentError, LocalDeployment, RunResult
from edgekd.launch import LaunchError, add_app_arguments, effective_run_config


def _credentials(
    certs: str | None, insecure: bool, workdir: Path, num_nodes: int
) -> DevCredentials | None:
    if insecure:
        if certs:
            raise SystemExit("--insecure and --certs exclude each other")
        print("edgekd.deploy: INSECURE mode: no TLS, no SuperNode authentication", flush=True)
        return None
    if not certs:
        return generate_dev_credentials(workdir / "certs", num_nodes=num_nodes)
    creds = DevCredentials.load(certs)
    if len(creds.node_keys) < num_nodes:
        for i in range(len(creds.node_keys), num_nodes):
            generate_node_key(creds.directory / f"supernode-{i}", f"edgekd-supernode-{i}")
            print(f"edgekd.deploy: wrote a new key pair {creds.directory}/supernode-{i}")
        creds = DevCredentials.load(certs)
    return creds


def _node_configs(num_nodes: int, node_data: Sequence[str]) -> list[dict[str, Any]]:
    if node_data and len(node_data) != num_nodes:
        raise SystemExit(f"got {len(node_data)} --node-data paths for {num_nodes} SuperNodes")
    configs: list[dict[str, Any]] = []
    for i in range(num_nodes):
        config: dict[str, Any] = {"partition-id": i, "num-partitions": num_nodes}
        if node_data:
            config["npz-path"] = str(Path(node_data[i]).expanduser().resolve())
        configs.append(config)
    return configs


def _start_nodes(
    deployment: LocalDeployment,
    creds: DevCredentials | None,
    configs: Sequence[dict[str, Any]],
) -> None:
    for i, config in enumerate(configs):
        key = None
        if creds is not None:
            key, public = creds.node_keys[i]
            node_id = deployment.register_node(public)
            print(f"edgekd.deploy: registered {public.name} as node {node_id}", flush=True)
        deployment.start_supernode(config, key, name=str(i))
    deployment.wait_for_nodes(len(configs))
    print(f"edgekd.deploy: {len(configs)} SuperNodes online", flush=True)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        root = Path(path).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        yield root
    else:
        with tempfile.TemporaryDirectory(prefix="edgekd-deploy-") as tmp:
            yield Path(tmp)


def _report(result: RunResult, deployment: LocalDeployment) -> int:
    if result.ok:
        print(f"edgekd.deploy: run {result.run_id} {result.status}", flush=True)
        return 0
    print(
        f"edgekd.deploy: run {result.run_id} ended with status {result.status!r} "
        f"(flwr run exit code {result.returncode}): {result.details}",
        file=sys.stderr,
    )
    for process in [deployment.superlink, *deployment.supernodes]:
        if process is not None:
            print(f"--- {process.name} ({process.log_file})", file=sys.stderr)
            print(process.log_tail(20), file=sys.stderr)
    return 1


def cmd_certs(args: argparse.Namespace) -> int:
    """``certs``: write development credentials."""
    creds = generate_dev_credentials(
        args.out_dir, num_nodes=args.nodes, hosts=args.host or DEFAULT_HOSTS, days=args.days
    )
    print(f"CA certificate      {creds.ca_cert}")
    print(f"SuperLink cert/key  {creds.server_cert} {creds.server_key}")
    for private, public in creds.node_keys:
        print(f"SuperNode key pair  {private} {public}")
    return 0


@contextlib.contextmanager
def _deployment(
    args: argparse.Namespace, num_nodes: int
) -> Iterator[tuple[LocalDeployment | None, Path]]:
    """A started deployment with ``num_nodes`` SuperNodes (None, after printing why, if the
    nodes could not start) and its work directory; stopped on exit."""
    with _workdir(args.workdir) as workdir:
        creds = _credentials(args.certs, args.insecure, workdir, num_nodes)
        with LocalDeployment(workdir, credentials=creds, insecure=args.insecure) as deployment:
            try:
                _start_nodes(deployment, creds, _node_configs(num_nodes, args.node_data))
            except DeploymentError as err:
                print(f"edgekd.deploy: {err}", file=sys.stderr)
                yield None, workdir
                return
            yield deployment, workdir


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: deployment + one ``flwr run`` + stop."""
    app = Path(args.app).resolve()
    config = effective_run_config(app, args.run_config)
    num_nodes = args.nodes or (len(args.node_data) if args.node_data else 0)
    num_nodes = num_nodes or int(config.get("num-partitions", 2))
    with _deployment(args, num_nodes) as (deployment, _):
        if deployment is None:
            return 1
        result = deployment.run(app, args.run_config, timeout=args.timeout, stream=sys.stdout)
        return _report(result, deployment)


def cmd_up(args: argparse.Namespace) -> int:
    """``up``: deployment until Ctrl-C."""
    num_nodes = args.nodes or (len(args.node_data) if args.node_data else 2)
    with _deployment(args, num_nodes) as (deployment, workdir):
        if deployment is None:
            return 1
        home = shlex.quote(str(deployment.flwr_home))
        print(
            f"edgekd.deploy: SuperLink {deployment.address}, logs in {workdir}\n"
            f"Run an app on it (another shell):\n"
            f"  FLWR_HOME={home} flwr run . {CONNECTION} --stream "
            f"--run-config 'num-partitions={num_nodes} ...'\n"
            f"  FLWR_HOME={home} flwr ls {CONNECTION}\n"
            "Press Ctrl-C to stop the SuperLink and every SuperNode.",
            flush=True,
        )
        try:
            while deployment.all_alive():
                time.sleep(1.0)
            print("edgekd.deploy: a process exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("edgekd.deploy: stopping", flush=True)
            return 0


def _add_deployment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=0, help="number of SuperNodes")
    parser.add_argument(
        "--node-data",
        action="append",
        default=[],
        metavar="NPZ",
        help="node i's own data set (its node config npz-path); repeat once per node",
    )
    parser.add_argument("--certs", default=None, help="credentials dir from `certs`")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication (debugging only)",
    )
    parser.add_argument(
        "--workdir", default=None, help="keep logs and state here (default: a temp dir)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m edgekd.deploy --help``."""
    parser = argparse.ArgumentParser(
        prog="python -m edgekd.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    certs = commands.add_parser("certs", help="write development certificates and node keys")
    certs.add_argument("out_dir", help="output directory (keep it out of version control)")
    certs.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to write")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="SuperLink host name/IP for the certificate (repeatable; "
        "default 127.0.0.1 and localhost)",
    )
    certs.add_argument("--days", type=int, default=365, help="certificate validity")
    certs.set_defaults(func=cmd_certs)

    run = commands.add_parser("run", help="local secured deployment + flwr run + stop")
    add_app_arguments(run)
    run.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    _add_deployment_args(run)
    run.set_defaults(func=cmd_run)

    up = commands.add_parser("up", help="local secured deployment until Ctrl-C")
    _add_deployment_args(up)
    up.set_defaults(func=cmd_up)

    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            effective_run_config(Path(args.app).resolve(), args.run_config)
        except (ValueError, LaunchError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
