"""Any Flower ClientApp through ``flwr run``, Flower's simulation engine and Ray.

The app directory's ClientApp is ``tests/apps/plain_flower_client.py``: written against
Flower's API only (``@app.train()``, ``@app.evaluate()``, no ``query.whoami``), with edgekd's
ServerApp. Cloned distillation, its asynchronous form and FedAvg must each change the server's
model in every round.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from edgekd.launch import launch

ROOT = Path(__file__).resolve().parents[2]
PLAIN_CLIENT = ROOT / "tests" / "apps" / "plain_flower_client.py"


def client_app_dir(tmp_path: Path, module: str, source: str) -> Path:
    """An app directory: edgekd's ServerApp and config, the ClientApp ``module:app``.

    The directory carries this checkout's ``edgekd/`` (so the run uses this code, whatever is
    installed) and ``<module>.py`` with ``source``; pyproject.toml is the repository's with
    the ``clientapp`` component and the FAB file list changed accordingly.
    """
    app = tmp_path / "app"
    app.mkdir()
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        'clientapp = "edgekd.clients.app:app"', f'clientapp = "{module}:app"'
    )
    pyproject = re.sub(
        r"(?m)^fab-include = .*$", f'fab-include = ["edgekd/**/*.py", "/{module}.py"]', pyproject
    )
    assert f"{module}:app" in pyproject and f"/{module}.py" in pyproject
    (app / "pyproject.toml").write_text(pyproject)
    (app / f"{module}.py").write_text(source)
    shutil.copytree(ROOT / "edgekd", app / "edgekd", ignore=shutil.ignore_patterns("__pycache__"))
    return app


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["cloned-distillation", "async-cloned-distillation", "fedavg"])
def test_flower_only_client_changes_the_model_every_round(
    tiny_npz: Path, tmp_path: Path, strategy: str
) -> None:
    """Through flwr run + Ray, a Flower-only ClientApp trains in every round of each strategy.

    Prepare: the app directory above; 2 SuperNodes (partitions of the tiny npz), core 1/4,
    CPP, 2 rounds.
    Execute: the launcher (flwr run, simulation engine, Ray).
    Assert: exit 0; the test loss changes from round 0 to 1 and from 1 to 2; for cloned
    distillation every round's edge replied (status ok) and the two rounds met both nodes.
    """
    out_dir = tmp_path / "results"
    run_config = (
        f"strategy='{strategy}' dataset='npz' npz-path='{tiny_npz}' core-fraction=0.25 "
        "num-partitions=2 num-server-rounds=2 cd-variant='CPP' cd-core-epochs=1 "
        f"cd-distill-epochs=1 batch-size=16 async-round-wait=120.0 output-dir='{out_dir}'"
    )
    code = launch(
        client_app_dir(tmp_path, "plain_flower_client", PLAIN_CLIENT.read_text()),
        [run_config],
        federation_config="num-supernodes=2 client-resources-num-cpus=1",
        timeout=540,
        flwr_home=tmp_path / "flwr-home",
    )
    assert code == 0
    (run_dir,) = list(out_dir.iterdir())
    rows = {row["round"]: row for row in json.loads((run_dir / "metrics.json").read_text())}
    assert rows[1]["test-loss"] != rows[0]["test-loss"]
    assert rows[2]["test-loss"] != rows[1]["test-loss"]
    if strategy == "cloned-distillation":
        assert [rows[r]["edge-status"] for r in (1, 2)] == ["ok", "ok"]
        assert rows[1]["edge-node"] != rows[2]["edge-node"]
    if strategy == "async-cloned-distillation":
        teachers = json.loads((run_dir / "teachers.json").read_text())
        assert [t["status"] for t in teachers] == ["ok", "ok"]


@pytest.mark.integration
def test_run_where_no_node_trains_fails_with_the_reason(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through flwr run + Ray, a run in which every node fails is a failed run, with its reason.

    Prepare: an app whose ClientApp has no handler at all (every message gets Flower's "No
    train function registered" error reply); cloned distillation, 2 SuperNodes, 1 round.
    Execute: the launcher.
    Assert: exit 1; its one status line on stderr says the run failed and names the
    strategy's reason and Flower's.
    """
    source = "from flwr.clientapp import ClientApp\n\napp = ClientApp()\n"
    run_config = (
        f"strategy='cloned-distillation' dataset='npz' npz-path='{tiny_npz}' "
        "core-fraction=0.25 num-partitions=2 num-server-rounds=1 cd-variant='CPP' "
        f"cd-core-epochs=1 cd-distill-epochs=1 batch-size=16 output-dir='{tmp_path / 'out'}'"
    )
    code = launch(
        client_app_dir(tmp_path, "empty_client", source),
        [run_config],
        federation_config="num-supernodes=2 client-resources-num-cpus=1",
        timeout=540,
        flwr_home=tmp_path / "flwr-home",
    )
    assert code == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("edgekd.launch")]
    assert "finished:failed" in line
    assert "cloned-distillation: no edge returned a model in any of 1 round(s)" in line
    assert "No train function registered" in line
