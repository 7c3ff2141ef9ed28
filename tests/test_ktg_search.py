"""Tests for edgekd.ktg_search: the search space, the data split, the log, a 4-trial ASHA search.

Paper: "Knowledge Transfer Graph for Deep Collaborative Learning" (Minami et al., ACCV 2020),
official code https://github.com/somaminami/DCL.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgekd.ktg_search import (
    METRIC,
    SearchSpace,
    TrainSettings,
    asha_milestones,
    build_graph_models,
    load_graph_data,
    search_log,
    train_config,
)
from edgekd.losses.ktg import GateMatrix

HAS_TUNE = importlib.util.find_spec("ray") is not None and (
    importlib.util.find_spec("ray.tune") is not None
)


def test_the_module_imports_without_ray_tune() -> None:
    """The base install works: importing the module loads no ``ray.tune``."""
    code = "import sys, edgekd.ktg_search; assert 'ray.tune' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sampled_graphs_are_distinct_valid_and_reproducible() -> None:
    """Every drawn graph parses, has no fixed node, pins node 0's model and is drawn once."""
    space = SearchSpace(num_nodes=3, model_pool=("cnn", "resnet8"), target_model="resnet8")
    configs = space.sample(60, seed=1)
    assert configs == space.sample(60, seed=1)
    assert configs != space.sample(60, seed=2)
    assert len({(c["gates"], c["models"]) for c in configs}) == 60
    for config in configs:
        matrix = GateMatrix.parse(config["gates"], 3)
        assert matrix.fixed_nodes == ()
        models = config["models"].split(",")
        assert models[0] == "resnet8" and set(models) <= {"cnn", "resnet8"}


def test_sampling_without_a_target_draws_node_0_from_the_pool() -> None:
    """``target_model=None`` searches node 0's model too."""
    space = SearchSpace(num_nodes=2, model_pool=("cnn", "resnet8"), target_model=None)
    firsts = {c["models"].split(",")[0] for c in space.sample(30, seed=0)}
    assert firsts == {"cnn", "resnet8"}


def test_a_space_too_small_or_misnamed_is_refused() -> None:
    """Only Cutoff gates give no valid graph; unknown models and gate letters are refused."""
    with pytest.raises(ValueError, match="gave only 0 of 1"):
        SearchSpace(num_nodes=2, model_pool=("cnn",), gates=("X",)).sample(1, seed=0)
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        SearchSpace(model_pool=("resnet9",))
    with pytest.raises(ValueError, match="gates must be letters"):
        SearchSpace(gates=("T", "Q"))
    with pytest.raises(ValueError, match="num_nodes >= 2"):
        SearchSpace(num_nodes=1)


def test_asha_milestones_match_the_scheduler() -> None:
    """grace 1, factor 2: rungs at 1, 2, 4, 8 below max_t 16."""
    assert asha_milestones(16) == [1, 2, 4, 8]
    assert asha_milestones(2) == [1]
    assert asha_milestones(12, grace_period=1, reduction_factor=3) == [1, 3, 9]


def test_validation_split_is_disjoint_stratified_and_apart_from_test(tiny_npz: Path) -> None:
    """160 training images: 32 held out (20 %, per class), the test set untouched."""
    data = load_graph_data(tiny_npz, val_fraction=0.2)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (128, 32, 40)
    train = {tuple(row.flatten().tolist()) for row in data.x_train}
    assert not any(tuple(row.flatten().tolist()) in train for row in data.x_val)
    assert set(data.y_val.tolist()) == set(data.y_train.tolist())
    assert data.description["val"] == 32
    with pytest.raises(ValueError, match="empty validation split"):
        load_graph_data(tiny_npz, val_fraction=0.0)


def test_node_0_starts_alike_in_every_graph_of_a_seed() -> None:
    """Node ``i``'s initial weights depend on its index, model and seed only."""
    a = build_graph_models(["cnn", "resnet8"], 0, 4, 3)
    b = build_graph_models(["cnn", "cnn", "cnn"], 0, 4, 3)
    c = build_graph_models(["cnn"], 1, 4, 3)
    same = zip(a[0].state_dict().values(), b[0].state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in same)
    assert not torch.equal(next(iter(b[0].parameters())), next(iter(b[1].parameters())))
    assert not torch.equal(next(iter(a[0].parameters())), next(iter(c[0].parameters())))


def test_train_config_needs_weights_for_fixed_nodes(tiny_npz: Path, one_torch_thread: None) -> None:
    """A fixed node without pretrained weights is refused; with them it trains the student."""
    data = load_graph_data(tiny_npz)
    settings = TrainSettings(epochs=1, batch_size=32, augment=False)
    config = {"gates": "T,T;X,X", "models": "cnn,cnn"}
    with pytest.raises(ValueError, match=r"fixed node\(s\) \[1\]"):
        train_config(config, data, settings)
    teacher = build_graph_models(["cnn"], 5, data.num_classes, data.in_channels)[0].state_dict()
    models, history = train_config(config, data, settings, pretrained={1: teacher})
    assert len(history) == 1 and history[0].val_accuracy is not None
    assert all(torch.equal(teacher[k], v) for k, v in models[1].state_dict().items())


def _fake_result(trial: str, curve: list[float], error: object = None) -> SimpleNamespace:
    graph = {"gates": "T,T;T,T", "models": "cnn,cnn"}
    return SimpleNamespace(
        metrics={"trial_id": trial, METRIC: curve[-1] if curve else None},
        metrics_dataframe={METRIC: curve},
        config={"graph": graph},
        error=error,
    )


def test_search_log_reads_rungs_promotions_and_the_best_survivor() -> None:
    """Stopped trials are never best; rung counts follow the epochs each trial reached."""
    results = [
        _fake_result("a", [0.5, 0.6, 0.7, 0.8]),
        _fake_result("b", [0.9]),
        _fake_result("c", [0.4, 0.5, 0.6, 0.75]),
        _fake_result("d", [0.3, 0.4]),
        _fake_result("e", [], error=RuntimeError("boom\ntrace")),
    ]
    log = search_log(results, TrainSettings(epochs=4), extra={"seed": 3})
    assert log["trials"] == 5 and log["seed"] == 3
    assert log["best"]["trial_id"] == "a" and log["gates"] == "T,T;T,T"
    assert log["scheduler"]["rungs"] == {
        "1": {"reached": 4, "promoted": 3},
        "2": {"reached": 3, "promoted": 2},
    }
    status = {t["trial_id"]: t["status"] for t in log["trial_log"]}
    assert status == {
        "a": "completed",
        "b": "stopped at epoch 1",
        "c": "completed",
        "d": "stopped at epoch 2",
        "e": "error",
    }
    assert log["trial_log"][-1]["error"] == "boom"
    assert log["epochs_trained"] == 11
    assert log["mean_val_accuracy_completed"] == pytest.approx(0.775)


@pytest.mark.skipif(not HAS_TUNE, reason="ray.tune is not installed: pip install 'edgekd[tune]'")
def test_four_trial_asha_search_runs_logs_and_restores(
    tiny_npz: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    """4 tiny graphs, 2 epochs, 2 workers: every trial is logged; a restore retrains nothing."""
    import ray

    from edgekd.ktg_search import run_search

    data = load_graph_data(tiny_npz)
    space = SearchSpace(num_nodes=2, model_pool=("cnn",), target_model="cnn")
    settings = TrainSettings(epochs=2, batch_size=32)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = run_search(space, data, settings, num_trials=4, storage=tmp_path)
        log = search_log(results, settings)
        again = run_search(space, data, settings, num_trials=4, storage=tmp_path)
    finally:
        ray.shutdown()
    sampled = {c["gates"] for c in space.sample(4, seed=0)}
    assert log["trials"] == 4 and {t["gates"] for t in log["trial_log"]} == sampled
    assert all(1 <= t["epochs"] <= 2 and t["status"] != "error" for t in log["trial_log"])
    assert log["gates"] in sampled and 0.0 <= log["best"]["val_accuracy"] <= 1.0
    assert sum(t["status"] == "completed" for t in log["trial_log"]) >= 1
    assert len(again) == 4 and not again.errors
    assert np.allclose(
        sorted(r.metrics[METRIC] for r in again),
        sorted(t["val_accuracy"] for t in log["trial_log"]),
    )
