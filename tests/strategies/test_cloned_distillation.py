"""Tests for the cloned-distillation strategy: config parsing, edge order and real-message runs.

The runs use :class:`edgekd.inprocess.InProcessGrid`, which delivers real Flower messages to a real
(or a deliberately misbehaving) ClientApp in this process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from edgekd.clients.app import app as real_client_app
from edgekd.config import ExperimentConfig
from edgekd.experiment import build_experiment_model
from edgekd.inprocess import InProcessGrid
from edgekd.protocol import member_key
from edgekd.runner import run_experiment
from edgekd.strategies.cloned_distillation import (
    ClonedDistillation,
    ClonedDistillationConfig,
    parse_variant,
)
from edgekd.strategies.teacher_memory import TeacherOutputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_config(tiny_npz: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A fast cloned-distillation run config on the tiny npz: 3 edges of 40 images, core 40."""
    config: dict[str, Any] = {
        "strategy": "cloned-distillation",
        "dataset": "npz",
        "npz-path": str(tiny_npz),
        "model": "cnn",
        "core-fraction": 0.25,
        "num-partitions": 3,
        "num-server-rounds": 3,
        "cd-variant": "CEM",
        "cd-ensemble-size": 2,
        "cd-memory-size": 2,
        "cd-core-epochs": 1,
        "cd-distill-epochs": 1,
        "local-epochs": 1,
        "batch-size": 16,
        "output-dir": str(tmp_path),
    }
    config.update(overrides)
    return config


def _rows(out_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.json of a run, keyed by round."""
    rows = json.loads((out_dir / "metrics.json").read_text())
    return {row["round"]: row for row in rows}


def _train_messages(grid: InProcessGrid) -> list[Message]:
    return [m for m in grid.delivered if m.metadata.message_type == MessageType.TRAIN]


def _model_state(run_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """State dict of a freshly built model of the run (for its key names)."""
    return build_experiment_model(ExperimentConfig.from_run_config(run_config)).state_dict()


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- parse_variant
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("IsPP", ("scratch", False, False)),
        ("IPP", ("independent", False, False)),
        ("IEP", ("independent", True, False)),
        ("IPM", ("independent", False, True)),
        ("CPP", ("clone", False, False)),
        ("CEP", ("clone", True, False)),
        ("CPM", ("clone", False, True)),
        ("CEM", ("clone", True, True)),
    ],
)
def test_parse_variant_paper_variants(variant: str, expected: tuple[str, bool, bool]) -> None:
    """Each of the paper's eight variant names maps to (edge init, ensemble on, memory on).

    Prepare: a variant name of the paper (Table 1) and its meaning.
    Execute: parse_variant, also with surrounding whitespace.
    Assert: the expected tuple both times.
    """
    assert parse_variant(variant) == expected
    assert parse_variant(f" {variant}\n") == expected


@pytest.mark.parametrize("variant", ["XPP", "CEX", "CXM", "CE", "CEMM", "Is", "", "cem", "ISPP"])
def test_parse_variant_unknown_name_lists_examples(variant: str) -> None:
    """An unknown variant raises ValueError naming it and listing valid examples.

    Prepare: a malformed variant name.
    Execute: parse_variant.
    Assert: ValueError with the name (repr) and the examples CEM, CPP, IEP, IsPP.
    """
    with pytest.raises(ValueError, match=r"variant " + repr(variant) + r".*CEM, CPP, IEP, IsPP"):
        parse_variant(variant)


# ----------------------------------------------------------------------------- config
def test_config_cpp_forces_single_model_and_memory() -> None:
    """A variant without E and M overrides cd-ensemble-size and cd-memory-size with 1.

    Prepare: cd-variant CPP with cd-ensemble-size 3 and cd-memory-size 4.
    Execute: ClonedDistillationConfig.from_run_config.
    Assert: edge_init clone, ensemble_size 1, memory_size 1, one teacher per edge.
    """
    cd = ClonedDistillationConfig.from_run_config(
        {"cd-variant": "CPP", "cd-ensemble-size": 3, "cd-memory-size": 4}
    )
    assert (cd.edge_init, cd.ensemble_size, cd.memory_size) == ("clone", 1, 1)
    assert cd.teachers_per_edge == 1


def test_config_cem_keeps_ensemble_and_memory() -> None:
    """A variant with E and M keeps the given P and M; other cd-* keys are parsed too.

    Prepare: cd-variant CEM with P 3, M 4, t 2, edge-init "clone" (agrees with the
    variant), distill-epochs 7 and cd-ensemble-mode "average".
    Execute: ClonedDistillationConfig.from_run_config.
    Assert: clone init, P 3, M 4, t 2.0, distill_epochs 7, and one teacher per edge in
    "average" mode.
    """
    cd = ClonedDistillationConfig.from_run_config(
        {
            "cd-variant": "CEM",
            "cd-ensemble-size": 3,
            "cd-memory-size": 4,
            "cd-temperature": 2,
            "cd-edge-init": "clone",
            "cd-distill-epochs": 7,
            "cd-ensemble-mode": "average",
        }
    )
    assert (cd.edge_init, cd.ensemble_size, cd.memory_size) == ("clone", 3, 4)
    assert cd.temperature == 2.0 and isinstance(cd.temperature, float)
    assert cd.distill_epochs == 7
    assert cd.teachers_per_edge == 1


def test_config_without_variant_uses_the_keys_as_given() -> None:
    """An empty cd-variant leaves edge init, P and M to their own keys.

    Prepare: cd-edge-init independent, cd-ensemble-size 3, cd-memory-size 2, no variant.
    Execute: ClonedDistillationConfig.from_run_config.
    Assert: those values, and 3 teachers per edge in the default "members" mode.
    """
    cd = ClonedDistillationConfig.from_run_config(
        {"cd-edge-init": "independent", "cd-ensemble-size": 3, "cd-memory-size": 2}
    )
    assert (cd.variant, cd.edge_init, cd.ensemble_size, cd.memory_size) == (
        "",
        "independent",
        3,
        2,
    )
    assert cd.teachers_per_edge == 3


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cd-temperature", 0, "cd-temperature must be > 0, got 0.0"),
        ("cd-temperature", -2.5, "cd-temperature must be > 0, got -2.5"),
        ("cd-edge-init", "foo", "cd-edge-init must be one of .* got 'foo'"),
        ("cd-edge-order", "random", "cd-edge-order must be one of .* got 'random'"),
        ("cd-ensemble-mode", "vote", "cd-ensemble-mode must be one of .* got 'vote'"),
        ("cd-ensemble-size", 0, "cd-ensemble-size must be >= 1, got 0"),
        ("cd-memory-size", 0, "cd-memory-size must be >= 1, got 0"),
        ("cd-distill-lr", 0, "cd-distill-lr must be > 0, got 0.0"),
        ("cd-round-timeout", -1, "cd-round-timeout must be > 0, got -1.0"),
        ("cd-core-epochs", "many", "'cd-core-epochs' must be a int, got 'many'"),
        ("cd-variant", "XEM", "variant 'XEM'"),
        ("cd-distill-loss", "mse", "cd-distill-loss must be one of .* got 'mse'"),
        ("cd-nmd-weights", "1,2", r"cd-nmd-weights must be 3 numbers >= 0 .* got \(1.0, 2.0\)"),
        ("cd-nmd-weights", "4,x,1", "cd-nmd-weights must be comma-separated numbers, got '4,x,1'"),
        ("cd-manifold", "tsne", "cd-manifold must be one of .* got 'tsne'"),
        ("cd-manifold-dim", 0, "cd-manifold-dim must be >= 1, got 0"),
    ],
)
def test_config_rejects_bad_values(key: str, value: object, message: str) -> None:
    """A bad cd-* value raises ValueError naming the key and the value.

    Prepare: a run config with one bad cd-* value (no variant unless the variant is tested).
    Execute: ClonedDistillationConfig.from_run_config.
    Assert: ValueError matching the key and value.
    """
    with pytest.raises(ValueError, match=message):
        ClonedDistillationConfig.from_run_config({key: value})


@pytest.mark.parametrize(
    ("variant", "edge_init", "expected"),
    [
        ("IsPP", "", ("scratch", 1, 1)),
        ("IsPP", "scratch", ("scratch", 1, 1)),
        ("IPM", "", ("independent", 1, 2)),
        ("CEP", "clone", ("clone", 3, 1)),
        ("control", "", ("clone", 1, 1)),
    ],
)
def test_config_constructor_applies_its_variant(
    variant: str, edge_init: str, expected: tuple[str, int, int]
) -> None:
    """A config built directly applies its variant to init, P and M.

    Prepare: a valid variant, an empty or agreeing edge_init, ensemble_size 3, memory_size 2.
    Execute: ClonedDistillationConfig(...) (must not raise).
    Assert: (edge_init, ensemble_size, memory_size) as the variant says.
    """
    cd = ClonedDistillationConfig(
        variant=variant, edge_init=edge_init, ensemble_size=3, memory_size=2
    )
    assert (cd.edge_init, cd.ensemble_size, cd.memory_size) == expected


def test_config_constructor_rejects_an_unknown_variant() -> None:
    """An unknown variant name is refused, naming it.

    Prepare: variant "XYZ".
    Execute: ClonedDistillationConfig(variant="XYZ").
    Assert: ValueError naming 'XYZ'.
    """
    with pytest.raises(ValueError, match="variant 'XYZ'"):
        ClonedDistillationConfig(variant="XYZ")


@pytest.mark.parametrize(
    ("variant", "edge_init"),
    [("CPP", "independent"), ("IPP", "clone"), ("IsPP", "independent"), ("control", "scratch")],
)
def test_config_edge_init_contradicting_the_variant_names_both_keys(
    variant: str, edge_init: str
) -> None:
    """An explicit cd-edge-init that contradicts cd-variant is an error, not silently overridden.

    Prepare: run config with cd-variant and a cd-edge-init the variant does not use.
    Execute: ClonedDistillationConfig.from_run_config.
    Assert: ValueError naming both keys and both values.
    """
    with pytest.raises(ValueError, match="cd-edge-init") as info:
        ClonedDistillationConfig.from_run_config({"cd-variant": variant, "cd-edge-init": edge_init})
    assert "cd-variant" in str(info.value)
    assert repr(edge_init) in str(info.value) and repr(variant) in str(info.value)


def test_config_default_run_config_follows_the_variant() -> None:
    """The app's defaults (cd-edge-init "") let every variant choose its own init.

    Prepare: [tool.flwr.app.config] of pyproject.toml with cd-variant IPP.
    Execute: ClonedDistillationConfig.from_run_config.
    Assert: edge_init "independent" (no conflict with the default).
    """
    from edgekd.launch import app_run_config

    run_config = {**app_run_config(Path(__file__).parents[2]), "cd-variant": "IPP"}
    assert ClonedDistillationConfig.from_run_config(run_config).edge_init == "independent"


# ----------------------------------------------------------------------------- edge order
def _strategy(tiny_npz: Path, tmp_path: Path, **overrides: Any) -> ClonedDistillation:
    run_config = _run_config(tiny_npz, tmp_path, **overrides)
    return ClonedDistillation(
        ExperimentConfig.from_run_config(run_config),
        ClonedDistillationConfig.from_run_config(run_config),
    )


def test_edge_for_round_round_robin(tiny_npz: Path, tmp_path: Path) -> None:
    """Round-robin meets edges 0, 1, 2, 0, 1, 2, ... from round 1 on.

    Prepare: a strategy with 3 edges and the default order.
    Execute: edge_for_round for rounds 1..7.
    Assert: [0, 1, 2, 0, 1, 2, 0].
    """
    strategy = _strategy(tiny_npz, tmp_path)
    assert [strategy.edge_for_round(r) for r in range(1, 8)] == [0, 1, 2, 0, 1, 2, 0]


def test_edge_for_round_permutation(tiny_npz: Path, tmp_path: Path) -> None:
    """The permutation order visits every edge once per pass, in a new order per pass and seed.

    Prepare: two strategies with 5 edges and cd-edge-order permutation, seeds 0 and 1.
    Execute: edge_for_round for 6 passes (rounds 1..30) of each.
    Assert: every pass is a permutation of 0..4; the passes are not all the same order; the two
    seeds give different sequences; the same seed gives the same sequence again.
    """
    sequences = {}
    for seed in (0, 1):
        strategy = _strategy(
            tiny_npz,
            tmp_path,
            **{"num-partitions": 5, "cd-edge-order": "permutation", "seed": seed},
        )
        order = [strategy.edge_for_round(r) for r in range(1, 31)]
        passes = [tuple(order[i : i + 5]) for i in range(0, 30, 5)]
        assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
        assert len(set(passes)) > 1
        assert order == [strategy.edge_for_round(r) for r in range(1, 31)]
        sequences[seed] = order
    assert sequences[0] != sequences[1]


def test_negative_seed_is_rejected_before_the_permutation_order(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """A negative seed (which numpy's seeded permutation cannot take) is refused early.

    Prepare: a run config with seed -1 and cd-edge-order permutation, 3 edges.
    Execute: build the strategy.
    Assert: ValueError naming 'seed' and the value, raised by the config parser.
    """
    with pytest.raises(ValueError, match=r"seed must be >= 0, got -1"):
        _strategy(tiny_npz, tmp_path, **{"seed": -1, "cd-edge-order": "permutation"})


def test_permutation_order_with_seed_zero(tiny_npz: Path, tmp_path: Path) -> None:
    """The smallest accepted seed works for the permutation order.

    Prepare: a run config with seed 0 and cd-edge-order permutation, 3 edges.
    Execute: ask for the edges of rounds 1..6.
    Assert: every pass of 3 rounds is a permutation of 0..2.
    """
    strategy = _strategy(tiny_npz, tmp_path, **{"seed": 0, "cd-edge-order": "permutation"})
    order = [strategy.edge_for_round(r) for r in range(1, 7)]
    assert sorted(order[:3]) == [0, 1, 2] and sorted(order[3:]) == [0, 1, 2]


def test_strategy_requires_core_split(tiny_npz: Path, tmp_path: Path) -> None:
    """Without core data the strategy cannot distil and says so.

    Prepare: a run config with core-fraction 0.
    Execute: build ClonedDistillation.
    Assert: ValueError naming core-fraction.
    """
    with pytest.raises(ValueError, match=r"core-fraction must be > 0, got 0\.0"):
        _strategy(tiny_npz, tmp_path, **{"core-fraction": 0.0})


# ----------------------------------------------------------------------------- real-message runs
def test_cem_run_one_edge_per_round_over_real_messages(tiny_npz: Path, tmp_path: Path) -> None:
    """CEM with P=2, M=2: one train message per round, in edge order, and per-round metrics.

    Prepare: 3 in-process nodes running the real ClientApp; 3 rounds of CEM.
    Execute: run_experiment.
    Assert: exactly one train message per round, to the nodes of partitions 0, 1, 2 in order;
    each carries only 'arrays' (the model's state) and 'config' (ensemble-size 2, init
    received, server-round); metrics.json rows 1..3 have status ok, core accuracy before/after,
    two teacher accuracies, num-teachers 2, 4, 4 (min(round, M) * P), and the consensus keys.
    """
    run_config = _run_config(tiny_npz, tmp_path)
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")

    trains = _train_messages(grid)
    assert [m.metadata.group_id for m in trains] == ["1", "2", "3"]
    assert [m.metadata.dst_node_id for m in trains] == [grid.node_id_of(p) for p in (0, 1, 2)]
    assert len({m.metadata.dst_node_id for m in trains}) == 3
    state_keys = set(_model_state(run_config))
    for server_round, message in enumerate(trains, start=1):
        content = message.content
        assert set(content.keys()) == {"arrays", "config"}
        assert set(content.array_records) == {"arrays"}
        assert set(content.config_records) == {"config"}
        assert not content.metric_records
        assert set(content["arrays"].keys()) == state_keys
        config = content["config"]
        assert config["ensemble-size"] == 2
        assert config["init"] == "received"
        assert config["server-round"] == server_round

    rows = _rows(tmp_path / "run")
    assert sorted(rows) == [0, 1, 2, 3]
    for server_round, teachers in [(1, 2), (2, 4), (3, 4)]:
        row = rows[server_round]
        assert row["edge-status"] == "ok"
        assert row["edge"] == server_round - 1
        assert 0.0 <= row["core-acc-before"] <= 1.0
        assert 0.0 <= row["core-acc-after"] <= 1.0
        assert len(row["teacher-accs"]) == 2
        assert all(0.0 <= a <= 1.0 for a in row["teacher-accs"])
        assert row["num-teachers"] == teachers
        assert row["memory-edges"] == min(server_round, 2)
        for key in ("before/consensus", "after/consensus", "delta-mutual", "delta-exclusive"):
            assert math.isfinite(row[key]), key
        assert row["delta-mutual"] == row["after/mutual"] - row["before/mutual"]
        assert row["core-acc-after"] == pytest.approx(row["test-acc"])
    # the core seen before round r's distillation is the core evaluated after round r-1
    for server_round in (2, 3):
        assert rows[server_round]["core-acc-before"] == pytest.approx(
            rows[server_round - 1]["test-acc"]
        )
    assert rows[1]["core-acc-before"] == pytest.approx(rows[0]["test-acc"])


@pytest.mark.parametrize("variant", ["CPP", "IPP", "IsPP"])
def test_variant_decides_what_the_edge_starts_from(
    tiny_npz: Path, tmp_path: Path, variant: str
) -> None:
    """C sends the current core, I the independent core-data model, Is asks for scratch init.

    Prepare: a ClonedDistillation strategy for the variant on 3 in-process real nodes; a
    central evaluate_fn that records the core arrays after every round (round 0 = after
    Phase 0).
    Execute: strategy.start for 2 rounds.
    Assert: the config asks for ensemble-size 1 and init "scratch" (IsPP) or "received"; CPP
    sends in round r exactly the core of round r-1; IPP sends the independent model in both
    rounds, which differs from the core at round 0; with every variant the core changes.
    """
    run_config = _run_config(tiny_npz, tmp_path, **{"cd-variant": variant})
    cfg = ExperimentConfig.from_run_config(run_config)
    strategy = ClonedDistillation(cfg, ClonedDistillationConfig.from_run_config(run_config))
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    cores: dict[int, dict[str, torch.Tensor]] = {}

    def record(server_round: int, arrays: ArrayRecord) -> None:
        cores[server_round] = arrays.to_torch_state_dict()

    strategy.start(
        grid,
        ArrayRecord(_model_state(run_config)),
        num_rounds=2,
        train_config=ConfigRecord({"local-epochs": 1, "batch-size": 16}),
        evaluate_fn=record,
    )
    trains = _train_messages(grid)
    assert len(trains) == 2
    sent = [m.content["arrays"].to_torch_state_dict() for m in trains]
    for message in trains:
        config = message.content["config"]
        assert config["ensemble-size"] == 1
        assert config["init"] == ("scratch" if variant == "IsPP" else "received")
    assert not _states_equal(cores[0], cores[2])
    if variant == "CPP":
        assert _states_equal(sent[0], cores[0])
        assert _states_equal(sent[1], cores[1])
    if variant == "IPP":
        assert strategy.independent is not None
        independent = strategy.independent.state_dict()
        assert _states_equal(sent[0], independent) and _states_equal(sent[1], independent)
        assert not _states_equal(sent[0], cores[0])
    reports = [strategy.round_report(r) for r in (1, 2)]
    assert [report["edge-status"] for report in reports] == ["ok", "ok"]
    assert [report["num-teachers"] for report in reports] == [1, 1]


# ----------------------------------------------------------------------------- fault tolerance
def _replace(reply: Message, request: Message, **records: Any) -> Message:
    """A copy of ``reply`` (to ``request``) with some records replaced or (None) removed."""
    content = RecordDict()
    for key, record in reply.content.items():
        if key in records:
            continue
        content[key] = record
    for key, record in records.items():
        if record is not None:
            content[key] = record
    return Message(content=content, reply_to=request)


def _corrupt(fault: str, reply: Message, request: Message) -> Message:
    """Turn a good 2-member reply into one with ``fault``."""
    second = reply.content[member_key(1)].to_torch_state_dict()
    name = next(k for k, v in second.items() if v.is_floating_point() and v.dim() > 1)
    if fault == "nan":
        second[name] = torch.full_like(second[name], float("nan"))
        return _replace(reply, request, **{member_key(1): ArrayRecord(second)})
    if fault == "wrong-shape":
        shape = list(second[name].shape)
        shape[0] += 1
        second[name] = torch.zeros(shape)
        return _replace(reply, request, **{member_key(1): ArrayRecord(second)})
    if fault == "wrong-keys":
        renamed = {("renamed." + k if k == name else k): v for k, v in second.items()}
        return _replace(reply, request, **{member_key(1): ArrayRecord(renamed)})
    if fault == "ensemble-size":
        metrics = reply.content["metrics"]
        metrics["ensemble-size"] = 1
        return _replace(reply, request, **{member_key(1): None, "metrics": metrics})
    if fault == "missing-member":
        return _replace(reply, request, **{member_key(1): None})
    if fault == "no-metrics":
        return _replace(reply, request, metrics=None)
    if fault == "ensemble-size-inf":
        metrics = reply.content["metrics"]
        metrics["ensemble-size"] = float("inf")
        return _replace(reply, request, metrics=metrics)
    if fault == "overflow":
        # finite but huge weights (a diverged edge): the teacher's logits overflow to inf/NaN
        huge = {
            k: v * 1e30 if v.is_floating_point() and not k.endswith("running_var") else v
            for k, v in second.items()
        }
        return _replace(reply, request, **{member_key(1): ArrayRecord(huge)})
    raise AssertionError(fault)


def _faulty_app(fault: str, broken_round: int = 1) -> ClientApp:
    """A ClientApp that misbehaves in ``broken_round`` and is the real app otherwise."""
    bad = ClientApp()

    @bad.train()
    def train(message: Message, context: Context) -> Message:
        server_round = int(message.content["config"]["server-round"])
        if server_round != broken_round:
            return real_client_app(message, context)
        if fault == "raise":
            raise RuntimeError("edge crashed while training")
        return _corrupt(fault, real_client_app(message, context), message)

    @bad.query("whoami")
    def whoami(message: Message, context: Context) -> Message:
        return real_client_app(message, context)

    return bad


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("raise", "edge replied with error 2"),
        ("nan", "NaN/inf"),
        ("wrong-shape", "has shape"),
        ("wrong-keys", "wrong keys"),
        ("ensemble-size", "ensemble-size 1, expected 2"),
        ("missing-member", "misses ensemble member 'arrays-1'"),
        ("no-metrics", "2 ArrayRecords and no 'ensemble-size'"),
        ("ensemble-size-inf", "ensemble-size"),
        ("overflow", "non-finite teacher outputs"),
    ],
)
def test_broken_reply_leaves_core_untouched(
    tiny_npz: Path, tmp_path: Path, fault: str, reason: str
) -> None:
    """A broken edge reply is rejected, the core is unchanged, and the next round works.

    Prepare: 3 in-process nodes running an app that breaks its round-1 reply (raises, NaN
    weights, a wrongly shaped array, a renamed array, 1 model when 2 are expected, a missing
    member, no metrics, an infinite ensemble-size, finite weights so large that the logits
    overflow) and is the real app in round 2; CEM with P=2, M=2, 2 rounds.
    Execute: run_experiment.
    Assert: round 1 edge-status "rejected: ..." naming the fault, no distillation metrics, and
    test-acc/test-loss equal to round 0's (same core); round 2 status ok with only round 2's
    2 teachers in memory; every test-acc finite.
    """
    run_config = _run_config(tiny_npz, tmp_path, **{"num-server-rounds": 2})
    grid = InProcessGrid(_faulty_app(fault), run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["edge-status"].startswith("rejected")
    assert reason in rows[1]["edge-status"]
    assert "core-acc-after" not in rows[1]
    assert rows[1]["test-acc"] == rows[0]["test-acc"]
    assert rows[1]["test-loss"] == rows[0]["test-loss"]
    assert rows[2]["edge-status"] == "ok"
    assert rows[2]["num-teachers"] == 2
    assert rows[2]["memory-edges"] == 1
    assert rows[2]["test-loss"] != rows[1]["test-loss"]
    assert all(math.isfinite(rows[r]["test-acc"]) for r in (0, 1, 2))
    assert len(_train_messages(grid)) == 2


def test_reply_that_never_comes_times_out(tiny_npz: Path, tmp_path: Path) -> None:
    """A round whose reply does not arrive within cd-round-timeout leaves the core unchanged.

    Prepare: 3 in-process real nodes; the round-1 train reply is held back for 10**9 pulls;
    cd-round-timeout 0.5 s; 2 rounds of CEM.
    Execute: run_experiment.
    Assert: round 1 edge-status "no-reply" and test-acc/test-loss equal to round 0's; round 2
    ok with 2 teachers; only round 2's train message was ever executed by a node.
    """

    def hold_round_one(message: Message) -> int:
        is_train = message.metadata.message_type == MessageType.TRAIN
        return 10**9 if is_train and message.metadata.group_id == "1" else 0

    run_config = _run_config(
        tiny_npz, tmp_path, **{"num-server-rounds": 2, "cd-round-timeout": 0.5}
    )
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3, delay_pulls=hold_round_one)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert rows[1]["edge-status"] == "no-reply"
    assert rows[1]["edge"] == 0
    assert rows[1]["test-acc"] == rows[0]["test-acc"]
    assert rows[1]["test-loss"] == rows[0]["test-loss"]
    assert rows[2]["edge-status"] == "ok"
    assert rows[2]["num-teachers"] == 2
    assert all(math.isfinite(rows[r]["test-acc"]) for r in (0, 1, 2))
    assert [m.metadata.group_id for m in _train_messages(grid)] == ["2"]


def test_nodes_are_asked_for_their_partitions_before_phase0(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whoami queries go out before Phase 0 and are not repeated afterwards.

    Prepare: 3 in-process nodes (real ClientApp); a grid that records every pushed message's
    type; Phase 0 wrapped to note how many queries were pushed when it starts.
    Execute: run_experiment for 2 rounds of CPP.
    Assert: all 3 whoami queries were pushed before Phase 0 began; exactly 3 queries were
    delivered in the whole run (the pushed answers are used, nobody is asked twice); every
    partition is mapped to its own node and the 2 train messages reach partitions 0 and 1.
    """

    class PushRecordingGrid(InProcessGrid):
        pushed: list[str]

        def push_messages(self, messages: Any) -> list[str]:
            messages = list(messages)
            self.pushed.extend(m.metadata.message_type for m in messages)
            return super().push_messages(messages)

    run_config = _run_config(tiny_npz, tmp_path, **{"cd-variant": "CPP", "num-server-rounds": 2})
    grid = PushRecordingGrid(real_client_app, run_config, num_nodes=3)
    grid.pushed = []
    queries_at_phase0: list[int] = []
    original = ClonedDistillation.phase0

    def phase0(self: ClonedDistillation) -> None:
        queries_at_phase0.append(grid.pushed.count("query.whoami"))
        original(self)

    monkeypatch.setattr(ClonedDistillation, "phase0", phase0)
    run_experiment(grid, run_config, tmp_path / "run")

    assert queries_at_phase0 == [3]
    queries = [m for m in grid.delivered if m.metadata.message_type == "query.whoami"]
    assert len(queries) == 3
    trains = _train_messages(grid)
    assert [m.metadata.dst_node_id for m in trains] == [grid.node_id_of(p) for p in (0, 1)]


# ----------------------------------------------------------------------------- control
def test_control_contacts_no_edge_and_runs_phase_two_without_teachers(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """The no-teacher control sends no message and equals Phase 0 + CE-only Phase 2 by hand.

    Prepare: the tiny run with cd-variant = "control", 2 rounds.
    Execute: run_experiment on the in-process grid; separately, Phase 0 then, per round,
    ``distill`` with zero teachers and the round's distill seed.
    Assert: nothing was delivered to any node; rounds report status "control" and 0 teachers;
    the hand-made core has exactly the run's final test accuracy, and differs from Phase 0.
    """
    from edgekd.distillation import distill
    from edgekd.seeds import derive_seed
    from edgekd.training import evaluate

    run_config = _run_config(
        tiny_npz, tmp_path, **{"cd-variant": "control", "num-server-rounds": 2}
    )
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / "run")
    rows = _rows(tmp_path / "run")

    assert list(grid.delivered) == []
    assert [rows[r]["edge-status"] for r in (1, 2)] == ["control", "control"]
    assert [rows[r]["num-teachers"] for r in (1, 2)] == [0, 0]
    strategy = _strategy(tiny_npz, tmp_path, **{"cd-variant": "control"})
    strategy.phase0()
    assert strategy.pool is not None
    phase0 = evaluate(strategy.model, strategy.test.x, strategy.test.y).accuracy
    assert rows[0]["test-acc"] == phase0
    for server_round in (1, 2):
        distill(
            strategy.model,
            strategy.pool,
            torch.empty(0, len(strategy.pool.x), 10),
            epochs=strategy.cd.distill_epochs,
            batch_size=strategy.config.batch_size,
            lr=strategy.cd.distill_lr,
            temperature=strategy.cd.temperature,
            momentum=strategy.config.momentum,
            weight_decay=strategy.config.weight_decay,
            seed=derive_seed("distill", strategy.config.seed, server_round=server_round),
        )
    final = evaluate(strategy.model, strategy.test.x, strategy.test.y)
    assert rows[2]["test-acc"] == final.accuracy
    assert rows[2]["test-loss"] == final.loss
    assert final.loss != rows[0]["test-loss"]


@pytest.mark.parametrize("num_nodes", [2, 5])
def test_nodes_partition_as_their_node_config_says(
    tiny_npz: Path, tmp_path: Path, num_nodes: int
) -> None:
    """Fewer or more nodes than the run config's num-partitions: the nodes' own decides.

    Prepare: a run config with num-partitions 3; ``num_nodes`` in-process edgekd nodes whose
    node configs say partition i of ``num_nodes`` (as Flower's simulation engine sets them for
    that many SuperNodes); CPP, 2 rounds.
    Execute: run_experiment.
    Assert: both rounds ok, meeting partitions 0 and 1 of ``num_nodes``; each edge trained on
    its share of the ``num_nodes``-way partitioning (reported num-examples).
    """
    from edgekd.experiment import client_data

    run_config = _run_config(tiny_npz, tmp_path, **{"cd-variant": "CPP", "num-server-rounds": 2})
    grid = InProcessGrid(real_client_app, run_config, num_nodes=num_nodes)
    run_experiment(grid, run_config, tmp_path / "run")

    rows = _rows(tmp_path / "run")
    assert [rows[r]["edge-status"] for r in (1, 2)] == ["ok", "ok"]
    assert [m.metadata.dst_node_id for m in _train_messages(grid)] == [
        grid.node_id_of(0),
        grid.node_id_of(1),
    ]
    nodes_cfg = ExperimentConfig.from_run_config({**run_config, "num-partitions": num_nodes})
    assert rows[1]["edge-num-examples"] == len(client_data(nodes_cfg, 0))


# ----------------------------------------------------------------------------- NMD in Phase 2
def test_config_nmd_manifold_must_fit_in_a_batch() -> None:
    """With cd-distill-loss "nmd", d > batch-size and (LTSA) k >= batch-size are refused."""
    with pytest.raises(ValueError, match=r"cd-manifold-dim \(64\) must be <= batch-size \(32\)"):
        ClonedDistillationConfig.from_run_config(
            {"cd-distill-loss": "nmd", "cd-manifold-dim": 64, "batch-size": 32}
        )
    with pytest.raises(ValueError, match=r"cd-neighbors \(16\) must be < batch-size \(16\)"):
        ClonedDistillationConfig.from_run_config(
            {"cd-distill-loss": "nmd", "cd-manifold": "ltsa", "cd-neighbors": 16, "batch-size": 16}
        )
    # the default KL loss never reads the manifold settings against the batch
    ClonedDistillationConfig.from_run_config({"cd-manifold-dim": 64, "batch-size": 32})


def test_nmd_needs_a_model_with_residual_stages(tiny_npz: Path, tmp_path: Path) -> None:
    """cd-distill-loss "nmd" with a model without forward_stages is refused at construction."""
    with pytest.raises(ValueError, match="model 'cnn' has no forward_stages"):
        _strategy(tiny_npz, tmp_path, **{"cd-distill-loss": "nmd", "cd-manifold-dim": 4})


def _nmd_rows(tiny_npz: Path, tmp_path: Path, name: str, **overrides: Any) -> dict[int, Any]:
    """A 2-round CPM run with resnet8 cores over real messages; its metrics rows."""
    run_config = _run_config(
        tiny_npz,
        tmp_path,
        model="resnet8",
        **{"num-server-rounds": 2, "cd-variant": "CPM", "cd-manifold-dim": 4},
        **overrides,
    )
    grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
    run_experiment(grid, run_config, tmp_path / name)
    return _rows(tmp_path / name)


def test_nmd_phase2_with_zero_stage_weights_equals_kl(tiny_npz: Path, tmp_path: Path) -> None:
    """NMD in Phase 2 is KL plus the manifold terms: with every lambda_j = 0 it is KL exactly.

    Prepare: three 2-round CPM runs (memory 2) on resnet8: cd-distill-loss "kl"; "nmd" with
    cd-nmd-weights "0,0,0"; "nmd" with "4,2,1".
    Execute: run_experiment over real messages for each.
    Assert: the zero-weight NMD run's per-round metrics equal the KL run's digit for digit; the
    4,2,1 run distils both rounds (status ok, finite loss) and ends with another Phase-2 loss.
    """
    kl = _nmd_rows(tiny_npz, tmp_path, "kl")
    zero = _nmd_rows(
        tiny_npz, tmp_path, "zero", **{"cd-distill-loss": "nmd", "cd-nmd-weights": "0,0,0"}
    )
    nmd = _nmd_rows(tiny_npz, tmp_path, "nmd", **{"cd-distill-loss": "nmd"})
    for server_round in (1, 2):
        for key in ("core-acc-after", "distill-loss", "core-train-acc", "test-acc", "test-loss"):
            assert zero[server_round][key] == kl[server_round][key], (server_round, key)
        assert nmd[server_round]["edge-status"] == "ok"
        assert math.isfinite(nmd[server_round]["distill-loss"])
        assert nmd[server_round]["num-teachers"] == server_round
    assert nmd[2]["distill-loss"] != kl[2]["distill-loss"]


def test_nmd_memory_keeps_teacher_weights_through_a_checkpoint(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """With NMD the memory holds each edge's model weights, and a checkpoint carries them.

    Prepare: a CPM strategy with cd-distill-loss "nmd" whose memory holds one edge (stored
    directly through TeacherMemory.remember with a resnet8 teacher).
    Execute: checkpoint_state, then restore_checkpoint into a fresh strategy.
    Assert: the restored memory's model weights equal the teacher's, tensor for tensor.
    """
    overrides = {"model": "resnet8", "cd-variant": "CPM", "cd-distill-loss": "nmd"}
    strategy = _strategy(tiny_npz, tmp_path, **overrides, **{"cd-manifold-dim": 4})
    teacher = build_experiment_model(strategy.config, seed=7).eval()
    outputs = TeacherOutputs(
        torch.zeros(1, len(strategy.test), 4), torch.zeros(1, len(strategy.core), 4)
    )
    strategy.teachers.remember(1, 0, outputs, 1.0, 0, models=[teacher])
    state = strategy.checkpoint_state()
    restored = _strategy(tiny_npz, tmp_path, **overrides, **{"cd-manifold-dim": 4})
    restored.restore_checkpoint(state, 1)
    states, weights = restored.teachers.feature_states()
    assert weights == [1.0]
    assert _states_equal(states[0], teacher.state_dict())


# ----------------------------------------------------------------------------- detect policies
def test_detect_policies_reject_and_exclude_when_every_edge_is_suspect(
    tiny_npz: Path, tmp_path: Path
) -> None:
    """ "reject" skips a suspect edge's whole Phase 2; "exclude" leaves only its teachers out.

    Prepare: 2-round CPM runs with cd-detect-threshold 100, so that every edge is suspect
    (score < 100 x reference), with policy "reject", "exclude", and the no-teacher control.
    Execute: run_experiment over real messages for each.
    Assert: "reject" never changes the core (every round's test accuracy and loss are Phase 0's);
    "exclude" trains the edges, records status "excluded: suspect", suspect 1 and the suspect
    teachers' accuracies, and - its memory staying empty - runs the cross-entropy-only Phase
    2, so its rounds equal the control's digit for digit.
    """
    common = {"cd-variant": "CPM", "num-server-rounds": 2, "cd-detect-threshold": 100.0}
    rows = {}
    for policy in ("reject", "exclude"):
        run_config = _run_config(tiny_npz, tmp_path, **common, **{"cd-detect-policy": policy})
        grid = InProcessGrid(real_client_app, run_config, num_nodes=3)
        run_experiment(grid, run_config, tmp_path / policy)
        assert len(_train_messages(grid)) == 2
        rows[policy] = _rows(tmp_path / policy)
    control_config = _run_config(
        tiny_npz, tmp_path, **{"cd-variant": "control", "num-server-rounds": 2}
    )
    run_experiment(
        InProcessGrid(real_client_app, control_config, num_nodes=3),
        control_config,
        tmp_path / "control",
    )
    control = _rows(tmp_path / "control")

    reject, exclude = rows["reject"], rows["exclude"]
    for server_round in (1, 2):
        assert reject[server_round]["edge-status"] == "rejected: suspect"
        assert reject[server_round]["test-acc"] == reject[0]["test-acc"]
        assert reject[server_round]["test-loss"] == reject[0]["test-loss"]
        row = exclude[server_round]
        assert row["edge-status"] == "excluded: suspect"
        assert row["suspect"] == 1
        assert len(row["teacher-accs"]) == 1
        assert row["num-teachers"] == 0
        assert row["test-acc"] == control[server_round]["test-acc"]
        assert row["test-loss"] == control[server_round]["test-loss"]
    assert exclude[2]["test-loss"] != exclude[0]["test-loss"]
