"""Tests for filter pruning + layer-wise transfer (split, protocol, config, strategy, client)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgekd.clients.app import app as real_client_app
from edgekd.config import ExperimentConfig
from edgekd.datasets.incremental import cloud_indices, edge_indices, local_labels, old_classes
from edgekd.experiment import experiment_split, load_bundle
from edgekd.inprocess import InProcessGrid
from edgekd.models.pruned_resnet import PrunedResNet, resnet_spec
from edgekd.protocol.prune_kt import (
    TEACHER_RECORD,
    TRANSFER_TYPE,
    TransferPlan,
    read_spec,
    read_transfer,
    spec_entries,
    transfer_config,
)
from edgekd.prune_kt_training import (
    Schedule,
    expand_classifier,
    fitnet_transfer,
    train_dependent,
    transfer,
)
from edgekd.pruning import keep_last_blocks
from edgekd.runner import run_experiment
from edgekd.strategies.common import FederationError
from edgekd.strategies.prune_kt import PruneKT
from edgekd.strategies.prune_kt_config import PruneKTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[2]


def _run_config(npz: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "strategy": "prune-kt",
        "dataset": "npz",
        "npz-path": str(npz),
        "model": "resnet8",
        "core-fraction": 0.5,
        "num-partitions": 2,
        "batch-size": 16,
        "output-dir": str(tmp_path),
        "pk-teacher-depth": 8,
        "pk-teacher-epochs": 2,
        "pk-student-epochs": 1,
        "pk-transfer-epochs": 1,
        "pk-thresholds": "1.0,0.8",
        "pk-new-classes": "3,2",
        "pk-old-fraction": 0.5,
        "pk-stat-images": 16,
        **overrides,
    }


def _start(run_config: dict[str, Any], **grid_options: Any) -> tuple[PruneKT, InProcessGrid]:
    cfg = ExperimentConfig.from_run_config(run_config)
    strategy = PruneKT(cfg, PruneKTConfig.from_run_config(run_config))
    grid = InProcessGrid(real_client_app, run_config, num_nodes=2, **grid_options)
    strategy.start(grid, initial_arrays=None)
    return strategy, grid


def test_split_keeps_new_classes_off_the_cloud_and_on_one_edge() -> None:
    """The cloud gets only old classes; edge i gets every non-core image of its new class and
    the kept fraction of its own partition's old-class images; outputs are old, then new."""
    labels = np.array([0, 1, 2, 3] * 10)
    core, rest = np.arange(20), np.arange(20, 40)
    partitions = [rest[:10], rest[10:]]
    assert old_classes(4, (3, 2)) == (0, 1)
    assert set(labels[cloud_indices(labels, core, (3, 2))]) == {0, 1}
    idx = edge_indices(
        labels, core, partitions, 0, old=(0, 1), new_class=3, old_fraction=1.0, seed=0
    )
    new = idx[labels[idx] == 3]
    assert set(new) == set(rest[labels[rest] == 3])  # from both partitions
    assert set(idx[labels[idx] != 3]) == set(partitions[0][np.isin(labels[partitions[0]], [0, 1])])
    none = edge_indices(
        labels, core, partitions, 0, old=(0, 1), new_class=3, old_fraction=0.0, seed=0
    )
    assert set(labels[none]) == {3}
    assert local_labels(np.array([0, 1, 2, 3]), (0, 1), 3).tolist() == [0, 1, -1, 2]


def test_spec_and_plan_round_trip_through_a_config_record() -> None:
    """A pruned spec and the whole transfer plan survive the ConfigRecord encoding."""
    from flwr.app import ConfigRecord

    spec = keep_last_blocks(resnet_spec(20).with_widths({"backbone.layer2.2.conv1": 7}))
    assert read_spec(ConfigRecord(spec_entries(spec, "student")), "student") == spec
    plan = TransferPlan(
        spec,
        resnet_spec(20),
        (0, 1, 2),
        3,
        0.9,
        2,
        16,
        0.01,
        0.9,
        5e-4,
        (1.0, 0.5, 1.0),
        0.25,
        7,
        True,
    )
    assert read_transfer(ConfigRecord(transfer_config(plan))) == plan
    broken = {**spec_entries(spec, "student"), "student-widths": [16, 16]}
    with pytest.raises(ValueError, match="student-widths has 2 entries"):
        read_spec(broken, "student")


def test_defaults_match_pyproject() -> None:
    """Every pk-* field has a pyproject key with the dataclass default, and no more keys."""
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert PruneKTConfig.from_run_config(app_config) == PruneKTConfig()
    fields = {"pk-" + name.replace("_", "-") for name in PruneKTConfig.__dataclass_fields__}
    assert fields == {key for key in app_config if key.startswith("pk-")}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"pk-thresholds": "1.0,1.2"}, r"pk-thresholds must be numbers in \[0, 1\]"),
        ({"pk-thresholds": "-0.1"}, r"pk-thresholds must be numbers in \[0, 1\]"),
        ({"pk-thresholds": "1,0.9,0.8"}, "pk-thresholds gives 3 values for num-partitions=4"),
        ({"pk-new-classes": "9,9,8,7"}, "pk-new-classes must be distinct"),
        ({"pk-new-classes": "9,8"}, "pk-new-classes gives 2 classes for num-partitions=4"),
        ({"pk-new-classes": "9,x"}, "pk-new-classes must be comma-separated"),
        ({"pk-teacher-depth": 18}, "pk-teacher-depth must be 6n \\+ 2"),
        ({"pk-old-fraction": 1.5}, r"pk-old-fraction must be in \[0, 1\]"),
        ({"pk-lambdas": "1,1"}, "pk-lambdas must be 3 numbers"),
    ],
)
def test_bad_settings_name_the_key(overrides: dict[str, Any], fragment: str) -> None:
    """A bad pk-* value fails at parse time with the key and the value in the message."""
    with pytest.raises(ValueError, match=fragment):
        PruneKTConfig.from_run_config(overrides)


def test_new_class_outside_the_data_set_is_refused(tiny_npz: Path, tmp_path: Path) -> None:
    """A new class that is no label of the data set fails when the strategy is built."""
    run_config = _run_config(tiny_npz, tmp_path, **{"pk-new-classes": "3,7"})
    with pytest.raises(ValueError, match=r"new classes \[7\] are not labels"):
        PruneKT(
            ExperimentConfig.from_run_config(run_config), PruneKTConfig.from_run_config(run_config)
        )


def test_transfer_trains_only_the_last_convs_and_the_classifier() -> None:
    """Layer-wise transfer changes each group's last conv2 and the classifier, nothing else
    (batch norm statistics included); the teacher is untouched; without a teacher it runs on
    labels alone; FitNet hints leave the classifier as it was."""
    torch.manual_seed(0)
    teacher = PrunedResNet(resnet_spec(8), 3)
    student = expand_classifier(
        PrunedResNet(keep_last_blocks(resnet_spec(8, widths=(8, 8, 8))), 3), 1, seed=0
    )
    assert student.classifier.out_features == 4
    x, y = torch.randn(12, 3, 8, 8), torch.tensor([0, 1, 2, 3] * 3)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    transfer(student, teacher, x, y, Schedule(1, 6, 0.1))
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {
        "backbone.layer1.0.conv2.weight",
        "backbone.layer2.0.conv2.weight",
        "backbone.layer3.0.conv2.weight",
        "classifier.weight",
        "classifier.bias",
    }
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    transfer(student, None, x, y, Schedule(1, 6, 0.1))
    head = student.classifier.weight.clone()
    fitnet_transfer(student, teacher, x, Schedule(1, 6, 0.1))
    assert torch.equal(student.classifier.weight, head)
    with pytest.raises(ValueError, match=r"stages .* do not match"):
        transfer(
            student, PrunedResNet(resnet_spec(8, widths=(16, 32)), 3), x, y, Schedule(1, 6, 0.1)
        )


def test_dependent_student_trains_every_layer_with_the_teacher() -> None:
    """A dependent student learns in every layer (batch norm statistics included) from the
    layer-wise loss; with lambda1 = lambda2 = 0 it is the label term alone, so the teacher's
    weights do not matter; a teacher of other stages is refused."""
    torch.manual_seed(0)
    teacher = PrunedResNet(resnet_spec(8), 3)
    spec = keep_last_blocks(resnet_spec(8, widths=(8, 8, 8)))
    x, y = torch.randn(12, 3, 8, 8), torch.tensor([0, 1, 2] * 4)
    torch.manual_seed(0)
    fresh = PrunedResNet(spec, 3)
    student = train_dependent(spec, 3, x, y, Schedule(1, 6, 0.1), teacher, init_seed=0)
    assert not student.training
    unchanged = {
        k
        for k, v in student.state_dict().items()
        if not k.endswith("num_batches_tracked") and torch.equal(v, fresh.state_dict()[k])
    }
    assert unchanged == set()
    labels_only = [
        train_dependent(
            spec, 3, x, y, Schedule(1, 6, 0.1), t, init_seed=0, lambdas=(0.0, 0.0, 1.0)
        ).state_dict()
        for t in (teacher, PrunedResNet(resnet_spec(8), 3))
    ]
    assert all(torch.equal(v, labels_only[1][k]) for k, v in labels_only[0].items())
    with pytest.raises(ValueError, match=r"stages .* do not match"):
        train_dependent(
            spec,
            3,
            x,
            y,
            Schedule(1, 6, 0.1),
            PrunedResNet(resnet_spec(8, widths=(16, 32)), 3),
            init_seed=0,
        )


def test_round_trip_through_the_client_app(tiny_npz: Path, tmp_path: Path) -> None:
    """Two edges with their own P and new class learn it through real Flower messages.

    Prepare: tiny npz, core 50 %, old classes {0, 1}, edge 0 new class 3 with P = 1, edge 1 new
    class 2 with P = 0.8. Execute: the strategy on the in-process grid with the real ClientApp.
    Assert: each edge got its own student (spec as data, P-dependent widths) and the teacher;
    the bytes recorded equal the arrays sent; both edges report before/after/without-KT
    accuracies on their test images; the round's means are the edges' means.
    """
    strategy, grid = _start(_run_config(tiny_npz, tmp_path))
    sent = [m for m in grid.delivered if m.metadata.message_type == TRANSFER_TYPE]
    assert len(sent) == 2
    plans = [read_transfer(m.content["config"]) for m in sent]
    assert [p.new_class for p in plans] == [3, 2] and [p.threshold for p in plans] == [1.0, 0.8]
    assert [p.student for p in plans] == [strategy.students[1.0].spec, strategy.students[0.8].spec]
    assert all(p.old_classes == (0, 1) for p in plans)
    for message, plan in zip(sent, plans, strict=True):
        arrays = message.content.array_records
        assert (
            arrays[TEACHER_RECORD].count_bytes()
            == strategy.edges[str(sent.index(message))]["teacher-bytes"]
        )
        state = arrays["arrays"].to_torch_state_dict()
        assert state["classifier.weight"].shape[0] == 2
        assert all(
            torch.equal(state[k], v)
            for k, v in strategy.students[plan.threshold].state_dict().items()
        )
    cfg = ExperimentConfig.from_run_config(_run_config(tiny_npz, tmp_path))
    test_y = load_bundle(cfg).y_test
    for label, new_class in (("0", 3), ("1", 2)):
        edge = strategy.edges[label]
        assert edge["status"] == "ok"
        assert edge["test-new"] == int((test_y == new_class).sum())
        assert edge["test-old"] == int(np.isin(test_y, [0, 1]).sum())
        for key in ("old-acc-before", "old-acc-after", "new-acc-after", "old-acc-without-kt"):
            assert 0.0 <= edge[key] <= 1.0
        assert edge["new-examples"] > 0
    row = strategy.round_report(1)
    assert row["edges-ok"] == 2
    assert row["new-acc-after"] == pytest.approx(
        np.mean([strategy.edges[k]["new-acc-after"] for k in ("0", "1")])
    )
    split = experiment_split(cfg)
    assert strategy.cloud["core-train"] == int(
        np.isin(load_bundle(cfg).y_train[split.core], [0, 1]).sum()
    )


def test_unusable_threshold_and_missing_new_class_skip_edges(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """An edge whose P prunes a layer to width 0 is skipped with that reason; an edge without
    images of its new class answers with an error; with no edge left the run fails."""
    run_config = _run_config(tiny_npz, tmp_path, **{"pk-thresholds": "0.0,1.0"})
    no_new = tmp_path / "no_new.npz"
    with np.load(tiny_npz) as data:
        keep = data["y_train"] != 2
        np.savez(
            no_new,
            x_train=data["x_train"][keep],
            y_train=data["y_train"][keep],
            x_test=data["x_test"],
            y_test=data["y_test"],
        )
    nodes = [
        {"partition-id": 0, "num-partitions": 2},
        {"partition-id": 1, "num-partitions": 2, "npz-path": str(no_new)},
    ]
    cfg = ExperimentConfig.from_run_config(run_config)
    strategy = PruneKT(cfg, PruneKTConfig.from_run_config(run_config))
    grid = InProcessGrid(real_client_app, run_config, num_nodes=2, node_configs=nodes)
    with pytest.raises(FederationError, match="no edge completed the transfer"):
        strategy.start(grid, initial_arrays=None)
    assert "would have width" in strategy.edges["0"]["status"]
    assert "no training images of its new class 2" in strategy.edges["1"]["status"]


def test_run_experiment_writes_the_report(tiny_npz: Path, tmp_path: Path) -> None:
    """Through the runner: prune_kt.json holds the cloud's per-P figures and the edges."""
    run_config = _run_config(tiny_npz, tmp_path, **{"pk-thresholds": "0.9", "pk-baseline": False})
    grid = InProcessGrid(real_client_app, run_config, num_nodes=2)
    run_experiment(grid, run_config, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "prune_kt.json").read_text())
    student = report["cloud"]["students"]["0.9"]
    assert student["ratio"] == pytest.approx(
        report["cloud"]["teacher"]["params"] / student["params"]
    )
    assert all(
        e["status"] == "ok" and "old-acc-without-kt" not in e for e in report["edges"].values()
    )
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(r.get("edges-ok") == 2 for r in rows)
