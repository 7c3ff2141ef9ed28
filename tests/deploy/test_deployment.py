"""Deployment: credentials, a secured SuperLink + SuperNodes on 127.0.0.1, faulty nodes.

The integration tests start real ``flower-superlink``/``flower-supernode`` processes with TLS
and SuperNode authentication on free loopback ports and check that every process they started
is gone afterwards. Each message in a deployment starts a fresh ClientApp process (~5 s), so
the end-to-end job is kept to the fewest messages: 2 whoami queries and 2 train messages.
"""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.app import Message, MessageType
from flwr.cli.supernode.register import try_load_public_key

from edgekd.clients.app import app as real_client_app
from edgekd.deploy import (
    DevCredentials,
    LocalDeployment,
    alive_flower_processes,
    format_node_config,
    generate_dev_credentials,
)
from edgekd.inprocess import InProcessGrid
from edgekd.runner import run_experiment

ROOT = Path(__file__).resolve().parents[2]


def _rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {row["round"]: row for row in json.loads((run_dir / "metrics.json").read_text())}


def _cd_run_config(tiny_npz: Path, out_dir: Path) -> dict[str, Any]:
    """2 rounds of cloned distillation (CPP) on the tiny npz: 2 edges of 60 images, core 40."""
    return {
        "strategy": "cloned-distillation",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "core-fraction": 0.25,
        "num-partitions": 2,
        "num-server-rounds": 2,
        "cd-variant": "CPP",
        "cd-core-epochs": 1,
        "cd-distill-epochs": 1,
        "local-epochs": 1,
        "batch-size": 16,
        "output-dir": str(out_dir),
    }


# ----------------------------------------------------------------------------- credentials
def test_dev_credentials_are_what_flower_expects(tmp_path: Path) -> None:
    """CA-signed SuperLink cert for 127.0.0.1/localhost; OpenSSH P-384 node keys, mode 0600.

    Prepare: nothing.
    Execute: generate_dev_credentials(num_nodes=2), then DevCredentials.load of the same dir.
    Assert: the server certificate is issued by the CA, has SANs 127.0.0.1 and localhost and
    serverAuth; each node private key loads as an EC key (as flower-supernode loads it), each
    public key is accepted by `flwr supernode register`'s loader; private keys are 0600;
    load() finds the same files.
    """
    creds = generate_dev_credentials(tmp_path / "certs", num_nodes=2)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert len(creds.node_keys) == 2
    for private, public in creds.node_keys:
        key = load_ssh_private_key(private.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp384r1"
        assert try_load_public_key(public)
        assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    for path in (creds.ca_key, creds.server_key, *(k for k, _ in creds.node_keys)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert DevCredentials.load(tmp_path / "certs") == creds


def test_dev_credentials_extra_hosts(tmp_path: Path) -> None:
    """--host values (DNS names and IPs) all land in the certificate's SAN."""
    creds = generate_dev_credentials(
        tmp_path, num_nodes=0, hosts=["10.0.0.5", "superlink.lab", "127.0.0.1"]
    )
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "10.0.0.5",
        "127.0.0.1",
    }
    assert san.get_values_for_type(x509.DNSName) == ["superlink.lab"]
    assert creds.node_keys == ()


def test_missing_credentials_are_named(tmp_path: Path) -> None:
    """Loading an empty directory names the missing file and the command that makes it."""
    with pytest.raises(FileNotFoundError, match=r"ca\.crt is missing.*edgekd\.deploy certs"):
        DevCredentials.load(tmp_path)


def test_insecure_only_when_asked(tmp_path: Path) -> None:
    """A deployment without credentials is refused unless insecure=True is given."""
    with pytest.raises(ValueError, match="insecure=True"):
        LocalDeployment(tmp_path)
    creds = generate_dev_credentials(tmp_path / "certs", num_nodes=0)
    with pytest.raises(ValueError, match="not both"):
        LocalDeployment(tmp_path, credentials=creds, insecure=True)


def test_format_node_config_quotes_strings() -> None:
    """Strings become TOML strings (paths with spaces survive), numbers and bools stay bare."""
    text = format_node_config(
        {"partition-id": 1, "num-partitions": 2, "npz-path": "/d/my data.npz", "x": True}
    )
    assert text == 'partition-id=1 num-partitions=2 npz-path="/d/my data.npz" x=true'


# ----------------------------------------------------------------------------- node data
class _RecordingGrid(InProcessGrid):
    """An InProcessGrid that also keeps every reply the nodes sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[Message] = []

    def _execute(self, message: Message) -> Message:
        reply = super()._execute(message)
        self.replies.append(reply)
        return reply


@pytest.fixture
def flwr_log() -> Any:
    """Records of Flower's logger (the ClientApp logs through flwr.common.logger.log)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.DEBUG)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fault", ["missing", "malformed"])
def test_node_with_bad_data_sends_error_reply_and_run_carries_on(
    tiny_npz: Path, tmp_path: Path, fault: str, flwr_log: list[logging.LogRecord]
) -> None:
    """A node whose own data is missing/malformed: a clear error, an error reply, the run goes on.

    Prepare: 2 in-process nodes running the real ClientApp; node 1's node config points
    npz-path at a missing file or at an npz without y_train; 2 rounds of CPP.
    Execute: run_experiment.
    Assert: the node logged one ERROR naming its partition, the file and the problem; the
    server got error replies (code 2, same reason) from node 1 only (its whoami and its
    train: a node that cannot say who it is remains an edge, ordered after the mapped one);
    the run finished with rounds 0..2, round 1 (edge 0) ok, round 2 (edge 1) rejected with
    that reason and the core unchanged (test-acc and test-loss equal round 1's).
    """
    if fault == "missing":
        bad, reason = tmp_path / "absent.npz", "npz data set file not found"
    else:
        bad, reason = tmp_path / "broken.npz", "missing key(s) y_train"
        np.savez(bad, x_train=np.zeros((4, 8, 8, 3), np.uint8))
    run_config = _cd_run_config(tiny_npz, tmp_path)
    grid = _RecordingGrid(
        real_client_app,
        run_config,
        num_nodes=2,
        node_configs=[
            {"partition-id": 0, "num-partitions": 2},
            {"partition-id": 1, "num-partitions": 2, "npz-path": str(bad)},
        ],
    )
    run_experiment(grid, run_config, tmp_path / "run")

    errors = [r.getMessage() for r in flwr_log if r.levelno == logging.ERROR]
    assert any(
        m.startswith("partition 1: cannot load this node's data (node-config npz-path")
        and str(bad) in m
        and reason in m
        for m in errors
    ), errors
    bad_node = grid.node_id_of(1)
    failed = [r for r in grid.replies if r.has_error()]
    assert failed, "node 1 sent no error reply"
    assert all(r.metadata.src_node_id == bad_node for r in failed)
    assert failed[0].error.code == 2
    assert reason in failed[0].error.reason
    trains = [m for m in grid.delivered if m.metadata.message_type == MessageType.TRAIN]
    assert [m.metadata.dst_node_id for m in trains] == [grid.node_id_of(0), bad_node]
    rows = _rows(tmp_path / "run")
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["edge-status"] == "ok"
    assert rows[2]["edge"] == 1
    assert rows[2]["edge-status"].startswith("rejected: edge replied with error 2")
    assert reason in rows[2]["edge-status"]
    assert rows[2]["test-acc"] == rows[1]["test-acc"]
    assert rows[2]["test-loss"] == rows[1]["test-loss"]


@pytest.mark.usefixtures("one_torch_thread")
def test_node_with_its_own_data_trains_on_all_of_it(tiny_npz: Path, tmp_path: Path) -> None:
    """node-config npz-path: the node trains on that file's whole train split.

    Prepare: a second npz of 24 training images (same 8x8x3 shape, all 4 classes); node 1's
    node config points at it; 2 rounds of CPP on the tiny npz otherwise.
    Execute: run_experiment.
    Assert: round 2 (edge 1) ok with edge-num-examples 24 (its whole file, not a partition of
    the run's dataset); round 1 (edge 0) trained on its 60-image partition.
    """
    rng = np.random.default_rng(1)
    own = tmp_path / "device.npz"
    np.savez(
        own,
        x_train=rng.integers(0, 255, size=(24, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(24) % 4,
        x_test=np.zeros((0, 8, 8, 3), np.uint8),
        y_test=np.zeros((0,), np.int64),
    )
    run_config = _cd_run_config(tiny_npz, tmp_path)
    grid = InProcessGrid(
        real_client_app,
        run_config,
        num_nodes=2,
        node_configs=[
            {"partition-id": 0, "num-partitions": 2},
            {"partition-id": 1, "num-partitions": 2, "npz-path": str(own)},
        ],
    )
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert rows[1]["edge-status"] == "ok"
    assert rows[1]["edge-num-examples"] == 60
    assert rows[2]["edge-status"] == "ok"
    assert rows[2]["edge-num-examples"] == 24


# ----------------------------------------------------------------------------- deployment
@pytest.mark.integration
def test_unregistered_supernode_is_refused_and_failure_cleans_up(tmp_path: Path) -> None:
    """A SuperNode whose key was never registered cannot join; an error stops everything.

    Prepare: a TLS + node-auth SuperLink; keys for 2 nodes, only node 0's registered.
    Execute: start node 1 (unregistered key); wait for it to exit; then raise inside the
    deployment's `with` block.
    Assert: node 1 exits non-zero with "Failed to activate SuperNode" in its log; the
    SuperLink lists only the registered node, never online; after the exception, no process
    the deployment started or saw (SuperLink, SuperExec, SuperNode) is alive.
    """
    creds = generate_dev_credentials(tmp_path / "certs", num_nodes=2)
    pids: set[int] = set()
    with (
        pytest.raises(RuntimeError, match="simulated failure"),
        LocalDeployment(tmp_path / "work", credentials=creds) as deployment,
    ):
        registered = deployment.register_node(creds.node_keys[0][1])
        intruder = deployment.start_supernode(
            {"partition-id": 1, "num-partitions": 2}, creds.node_keys[1][0], name="intruder"
        )
        code = intruder.popen.wait(timeout=90)
        log_text = intruder.log_file.read_text()
        nodes = deployment.list_nodes()
        pids = deployment.started_pids
        raise RuntimeError("simulated failure")
    assert code != 0
    assert "Failed to activate SuperNode" in log_text
    assert [int(n["node-id"]) for n in nodes] == [registered]
    assert nodes[0]["status"] == "registered"
    assert len(pids) >= 3, pids  # superlink, its superexec, the supernode
    assert alive_flower_processes(pids) == {}


@pytest.mark.integration
def test_cloned_distillation_over_tls_with_node_auth(tiny_npz: Path, tmp_path: Path) -> None:
    """The unchanged apps on flower-superlink + 2 flower-supernodes, TLS and node auth.

    Prepare: dev credentials; a SuperLink with TLS + --enable-supernode-auth on a free
    127.0.0.1 port; both node keys registered; 2 SuperNodes with partition-id 0/1.
    Execute: `flwr run` a 2-round CPP cloned-distillation job on the tiny npz.
    Assert: the run's status is finished:completed; metrics.json has rounds 0..2, both edges
    replied ok; afterwards no process the test started (or saw started) is alive.
    """
    creds = generate_dev_credentials(tmp_path / "certs", num_nodes=2)
    out_dir = tmp_path / "results"
    config = _cd_run_config(tiny_npz, out_dir)
    overrides = " ".join(
        f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}" for k, v in config.items()
    )
    with LocalDeployment(tmp_path / "work", credentials=creds) as deployment:
        for i, (key, public) in enumerate(creds.node_keys):
            deployment.register_node(public)
            deployment.start_supernode({"partition-id": i, "num-partitions": 2}, key)
        online = deployment.wait_for_nodes(2)
        result = deployment.run(ROOT, [overrides], timeout=240)
        pids = deployment.started_pids
        logs = {p.name: p.log_tail(40) for p in [deployment.superlink, *deployment.supernodes]}
    assert len(online) == 2
    assert result.ok, (result, result.output[-3000:], logs)
    runs = list(out_dir.iterdir())
    assert len(runs) == 1
    rows = _rows(runs[0])
    assert sorted(rows) == [0, 1, 2]
    assert [rows[r]["edge-status"] for r in (1, 2)] == ["ok", "ok"]
    assert [rows[r]["edge"] for r in (1, 2)] == [0, 1]
    assert all(0.0 <= rows[r]["test-acc"] <= 1.0 for r in (0, 1, 2))
    assert len(pids) >= 6, pids  # superlink + superexec, 2 x (supernode + superexec), flwr run
    assert alive_flower_processes(pids) == {}


@pytest.mark.slow
@pytest.mark.integration
def test_deployed_node_with_missing_data_leaves_the_run_running(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """On real SuperNodes: missing data is an error in the node's log, the run completes.

    Prepare: secured SuperLink, 2 registered SuperNodes; node 1's node config points npz-path
    at a file that does not exist.
    Execute: `flwr run` 2 rounds of CPP cloned distillation.
    Assert: the run is finished:completed; node 1's log has the ClientApp's ERROR naming the
    file and Flower's "ClientApp raised an exception"; round 1 (edge 0) ok, round 2 (edge 1)
    not ok with the core unchanged; no process left behind.
    """
    creds = generate_dev_credentials(tmp_path / "certs", num_nodes=2)
    out_dir = tmp_path / "results"
    missing = tmp_path / "not-there.npz"
    config = _cd_run_config(tiny_npz, out_dir)
    overrides = " ".join(
        f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}" for k, v in config.items()
    )
    node_configs: list[dict[str, Any]] = [
        {"partition-id": 0, "num-partitions": 2},
        {"partition-id": 1, "num-partitions": 2, "npz-path": str(missing)},
    ]
    with LocalDeployment(tmp_path / "work", credentials=creds) as deployment:
        for (key, public), node_config in zip(creds.node_keys, node_configs, strict=True):
            deployment.register_node(public)
            deployment.start_supernode(node_config, key)
        deployment.wait_for_nodes(2)
        result = deployment.run(ROOT, [overrides], timeout=240)
        pids = deployment.started_pids
        bad_log = deployment.supernodes[1].log_file.read_text()
    assert result.ok, (result, result.output[-3000:])
    assert "cannot load this node's data" in bad_log
    assert str(missing) in bad_log
    assert "ClientApp raised an exception" in bad_log
    rows = _rows(next(out_dir.iterdir()))
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["edge-status"] == "ok"
    assert rows[2]["edge-status"] != "ok"
    assert rows[2]["test-loss"] == rows[1]["test-loss"]
    assert alive_flower_processes(pids) == {}
