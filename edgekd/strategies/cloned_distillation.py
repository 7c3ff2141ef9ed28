"""Cloned distillation, one edge per round (asynchronous edge learning).

Paper: "Asynchronous Edge Learning using Cloned Knowledge Distillation", ICLR 2021 submission,
https://openreview.net/forum?id=MqWHrrIfBMN

The server ("core") holds a small labelled core dataset that never leaves it. Phase 0 trains the
core model on it. Every round talks to exactly ONE edge: the edge receives a model (a clone of
the core, an independently initialised model trained on the core data with another seed, or
nothing to start from), trains it (optionally P clones that differ only in batch order) on its
private data and returns the model(s). Phase 2 distils the returned models, together with the
last M edges' models (temporal memory), into the core on the core data with
``L = CE + t^2 * sum_m w_m KL(softmax(f_m/t) || softmax(F/t))`` (Eq. 1-2), the learning rate
restarting at its initial high value.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.cache import TrainingCache, run_description, state_digest
from edgekd.config import ExperimentConfig, config_value
from edgekd.distillation import DistillPool, distill, make_distill_pool, pool_logits
from edgekd.experiment import TensorData, build_experiment_model, core_data, test_data
from edgekd.metrics import consensus_change, prediction_consensus
from edgekd.models import EdgeKDModel
from edgekd.protocol import ARRAYS, CONFIG, METRICS, WHOAMI, member_key
from edgekd.results import RunRecorder
from edgekd.strategies.registry import StrategyContext, register_strategy
from edgekd.training import TrainResult, evaluate, predict_logits, train_supervised

__all__ = ["ClonedDistillation", "ClonedDistillationConfig", "EdgeTeacher", "parse_variant"]

EDGE_INITS = ("clone", "independent", "scratch")
EDGE_ORDERS = ("round-robin", "permutation")
DETECT_POLICIES = ("off", "flag", "downweight", "reject")
ENSEMBLE_MODES = ("members", "average")
CONTROL = "control"


def parse_variant(variant: str) -> tuple[str, bool, bool]:
    """Split a paper variant name into (edge init, ensemble on, memory on).

    ``"CEM"`` -> ("clone", True, True); ``"IsPP"`` -> ("scratch", False, False);
    ``"IPM"`` -> ("independent", False, True). First letter(s): C (clone), I (independent,
    trained on the core data with another seed), Is (trained from scratch at the edge);
    second: E (cloned perturbation ensemble) or P (plain); third: M (temporal memory) or P.
    ``"control"`` is the no-teacher control: no edge is contacted and every round runs Phase 2
    with the cross-entropy term only (same schedule), so a variant's gain over it is what its
    teachers add beyond the extra training on the core data.
    """
    name = variant.strip()
    if name == CONTROL:
        return "clone", False, False
    if name.startswith("Is"):
        init, rest = "scratch", name[2:]
    elif name[:1] == "I":
        init, rest = "independent", name[1:]
    elif name[:1] == "C":
        init, rest = "clone", name[1:]
    else:
        init, rest = "", ""
    if init == "" or len(rest) != 2 or rest[0] not in "EP" or rest[1] not in "MP":
        raise ValueError(
            f"unknown cloned-distillation variant {variant!r}; expected C|I|Is + E|P + M|P, "
            f"e.g. CEM, CPP, IEP, IsPP, or {CONTROL!r} (no teacher)"
        )
    return init, rest[0] == "E", rest[1] == "M"


@dataclass(frozen=True)
class ClonedDistillationConfig:
    """The ``cd-*`` keys of the run config.

    Attributes
    ----------
    variant : str
        Paper variant (``CEM``, ``CPP``, ``IsPP``, ...); sets ``edge_init`` and whether the
        ensemble and the memory are used. Empty: use ``edge_init``, ``ensemble_size`` and
        ``memory_size`` as given.
    edge_init : {"clone", "independent", "scratch"}
    ensemble_size : int
        P, models trained per edge (batch-order perturbation) when the ensemble is on.
    memory_size : int
        M, the number of most recent edges whose models are distilled (1 = only this round's).
    ensemble_mode : {"members", "average"}
        An edge's P models count as P teachers ("members", default: the paper's sum over
        teachers) or as one teacher whose logits are their mean ("average").
    core_epochs, core_lr : Phase 0 schedule (cosine from ``core_lr``).
    distill_epochs, distill_lr : Phase 2 schedule (cosine restarting at ``distill_lr``).
    temperature : float
        t in Eq. 1.
    distill_views : int
        Augmented copies of the core data that the teachers' logits are cached on (only with
        ``augment``); 0 = one per distillation epoch.
    edge_order : {"round-robin", "permutation"}
        Order edges are met in; every edge once per pass, a new seeded permutation each pass.
    independent_seed_offset : int
        The independent (I) model is initialised with ``seed + offset``.
    round_timeout : float
        Seconds to wait for an edge's reply before the round goes on without it.
    detect_policy : {"off", "flag", "downweight", "reject"}
        Corrupted-edge detection. A returned edge is *suspect* when its models' accuracy on the
        server's core data is below ``detect_threshold`` times the reference (the median of
        previously accepted edges' scores; before any, the core model's own score). "flag"
        records it and distils anyway, "downweight" multiplies its teachers' weights by
        ``detect_downweight``, "reject" leaves it out (the core is not touched).
    detect_threshold, detect_downweight : float
        See ``detect_policy``.
    """

    variant: str = ""
    edge_init: str = "clone"
    ensemble_size: int = 1
    memory_size: int = 1
    ensemble_mode: str = "members"
    core_epochs: int = 10
    core_lr: float = 0.05
    distill_epochs: int = 5
    distill_lr: float = 0.05
    temperature: float = 4.0
    distill_views: int = 0
    edge_order: str = "round-robin"
    independent_seed_offset: int = 1000
    round_timeout: float = 3600.0
    detect_policy: str = "off"
    detect_threshold: float = 0.8
    detect_downweight: float = 0.1

    def __post_init__(self) -> None:
        """Apply ``variant`` (it decides init, ensemble and memory) and validate every value."""
        if self.variant:
            init, ensemble, memory = parse_variant(self.variant)
            object.__setattr__(self, "edge_init", init)
            if not ensemble:
                object.__setattr__(self, "ensemble_size", 1)
            if not memory:
                object.__setattr__(self, "memory_size", 1)
        if self.edge_init not in EDGE_INITS:
            raise ValueError(f"cd-edge-init must be one of {EDGE_INITS}, got {self.edge_init!r}")
        if self.edge_order not in EDGE_ORDERS:
            raise ValueError(f"cd-edge-order must be one of {EDGE_ORDERS}, got {self.edge_order!r}")
        if self.ensemble_mode not in ENSEMBLE_MODES:
            raise ValueError(
                f"cd-ensemble-mode must be one of {ENSEMBLE_MODES}, got {self.ensemble_mode!r}"
            )
        if self.detect_policy not in DETECT_POLICIES:
            raise ValueError(
                f"cd-detect-policy must be one of {DETECT_POLICIES}, got {self.detect_policy!r}"
            )
        if not 0.0 <= self.detect_downweight <= 1.0:
            raise ValueError(
                f"cd-detect-downweight must be in [0, 1], got {self.detect_downweight}"
            )
        for key, value, low in [
            ("cd-ensemble-size", self.ensemble_size, 1),
            ("cd-memory-size", self.memory_size, 1),
            ("cd-core-epochs", self.core_epochs, 0),
            ("cd-distill-epochs", self.distill_epochs, 0),
            ("cd-distill-views", self.distill_views, 0),
        ]:
            if value < low:
                raise ValueError(f"{key} must be >= {low}, got {value}")
        for key, value in [
            ("cd-core-lr", self.core_lr),
            ("cd-distill-lr", self.distill_lr),
            ("cd-temperature", self.temperature),
            ("cd-round-timeout", self.round_timeout),
            ("cd-detect-threshold", self.detect_threshold),
        ]:
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ClonedDistillationConfig:
        """Parse the ``cd-*`` keys; a non-empty ``cd-variant`` decides init/ensemble/memory."""
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            key = "cd-" + name.replace("_", "-")
            values[name] = config_value(run_config, key, spec.default, type(spec.default))
        return cls(**values)

    @property
    def is_control(self) -> bool:
        """The no-teacher control (``cd-variant = "control"``)."""
        return self.variant.strip() == CONTROL

    @property
    def teachers_per_edge(self) -> int:
        """Teachers one edge contributes to the distillation loss."""
        return self.ensemble_size if self.ensemble_mode == "members" else 1


@dataclass
class EdgeTeacher:
    """What the core keeps of one returned edge: its logits on the pool, not its weights."""

    server_round: int
    partition_id: int
    pool_logits: torch.Tensor  # (teachers_per_edge, V*n, C)
    test_accuracies: list[float]
    weight: float = 1.0
    staleness: int = 0


class ClonedDistillation(Strategy):
    """One edge per round; the returned edge models are distilled into the core model.

    Parameters
    ----------
    config : ExperimentConfig
        Shared run config (dataset, model, split with ``core-fraction`` > 0, edge schedule:
        ``local-epochs``, ``batch-size``, ``lr``, ``momentum``, ``weight-decay``).
    cd_config : ClonedDistillationConfig
        The method's own settings (variant, P, M, Phase 0/2 schedules, temperature, order).
    recorder : RunRecorder, optional
        Receives per-round metrics (core accuracy before/after distillation, teacher
        accuracies, consensus statistics).

    Notes
    -----
    The client must implement :mod:`edgekd.protocol`: train the received arrays (or a fresh
    model when ``init == "scratch"``) ``ensemble-size`` times with different batch orders and
    return all members in one reply. The core data and the core model never leave the server;
    only edge models travel.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        cd_config: ClonedDistillationConfig,
        *,
        recorder: RunRecorder | None = None,
    ) -> None:
        if config.core_fraction <= 0:
            raise ValueError(
                f"cloned distillation needs a core split: core-fraction must be > 0, got "
                f"{config.core_fraction}"
            )
        self.config = config
        self.cd = cd_config
        self.recorder = recorder
        self.core: TensorData = core_data(config)
        self.test: TensorData = test_data(config)
        self.model: EdgeKDModel = build_experiment_model(config, seed=config.seed)
        self.independent: EdgeKDModel | None = None
        self.memory: deque[EdgeTeacher] = deque(maxlen=cd_config.memory_size)
        self.accepted_scores: list[float] = []
        self.node_of_partition: dict[int, int] = {}
        self._whoami_pending: set[str] = set()
        self.pool: DistillPool | None = None
        self._flip = self.test.x.shape[-1] >= 16
        self._current_edge: int | None = None
        self._current_round_sent: float = 0.0

    # ------------------------------------------------------------------ helpers
    def summary(self) -> None:
        """Log the configuration."""
        cd = self.cd
        log(INFO, "\t├── Variant: %s (edge init %s)", cd.variant or "custom", cd.edge_init)
        log(
            INFO,
            "\t├── Ensemble P=%s (%s), memory M=%s",
            cd.ensemble_size,
            cd.ensemble_mode,
            cd.memory_size,
        )
        log(
            INFO,
            "\t├── Phase 0: %s epochs, lr %s; Phase 2: %s epochs, lr %s, t=%s",
            cd.core_epochs,
            cd.core_lr,
            cd.distill_epochs,
            cd.distill_lr,
            cd.temperature,
        )
        log(
            INFO,
            "\t└── Core data: %s examples; edges: %s; order %s",
            len(self.core),
            self.config.num_partitions,
            cd.edge_order,
        )

    def edge_for_round(self, server_round: int) -> int:
        """Partition id met in ``server_round`` (1-based): each edge once per pass."""
        edges = self.config.num_partitions
        pass_index, position = divmod(server_round - 1, edges)
        if self.cd.edge_order == "round-robin":
            return position
        rng = np.random.default_rng([self.config.seed, pass_index])
        return int(rng.permutation(edges)[position])

    def _log(self, server_round: int, metrics: Mapping[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.log_round(server_round, metrics)

    def _state(self, model: torch.nn.Module) -> ArrayRecord:
        return ArrayRecord(model.state_dict())

    def _train_on_core(self, model: torch.nn.Module, seed: int) -> float:
        """Phase 0 for ``model`` (loaded from ``cache-dir`` when an identical run stored it)."""
        if self.cd.core_epochs == 0:
            return evaluate(model, self.core.x, self.core.y).accuracy
        description = {
            "config": run_description(self.config),
            "core-epochs": self.cd.core_epochs,
            "core-lr": self.cd.core_lr,
            "seed": seed,
            "initial": state_digest(model.state_dict()),
        }

        def train() -> dict[str, Any]:
            accuracy = self._fit_core(model, seed)
            return {"state": model.state_dict(), "accuracy": accuracy}

        stored = TrainingCache(self.config.cache_dir).get_or_compute("phase0", description, train)
        model.load_state_dict(stored["state"])
        return float(stored["accuracy"])

    def _fit_core(self, model: torch.nn.Module, seed: int) -> float:
        result = train_supervised(
            model,
            self.core.x,
            self.core.y,
            epochs=self.cd.core_epochs,
            batch_size=self.config.batch_size,
            lr=self.cd.core_lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            seed=seed,
            augment=self.config.augment,
            padding=self.core.padding,
            flip=self._flip,
            lr_schedule="cosine",
        )
        return result.accuracy

    def phase0(self) -> None:
        """Train the core (and, for I-variants, the independent model) on the core data."""
        started = time.monotonic()
        log(
            INFO,
            "cloned-distillation: Phase 0, %s epochs on %s core examples",
            self.cd.core_epochs,
            len(self.core),
        )
        self._train_on_core(self.model, seed=self.config.seed)
        if self.cd.edge_init == "independent":
            seed = self.config.seed + self.cd.independent_seed_offset
            self.independent = build_experiment_model(self.config, seed=seed)
            self._train_on_core(self.independent, seed=seed)
        views = self.cd.distill_views or max(1, self.cd.distill_epochs)
        self.pool = make_distill_pool(
            self.core.x,
            self.core.y,
            views=views,
            augment=self.config.augment,
            padding=self.core.padding,
            flip=self._flip,
            seed=self.config.seed + 17,
        )
        acc = evaluate(self.model, self.test.x, self.test.y).accuracy
        log(
            INFO,
            "cloned-distillation: Phase 0 done in %.1fs, core test-acc %.4f",
            time.monotonic() - started,
            acc,
        )

    def _whoami(self, grid: Grid, node: int) -> Message:
        return grid.create_message(RecordDict(), f"{MessageType.QUERY}.{WHOAMI}", node, "whoami")

    def request_node_map(self, grid: Grid) -> None:
        """Push ``query.whoami`` to every connected node without waiting for the answers.

        :meth:`start` calls it before Phase 0, so that the nodes start their ClientApps and
        load their partitions while the core trains; :meth:`_map_nodes` collects the answers
        (and asks the nodes that were not connected yet).
        """
        messages = [self._whoami(grid, node) for node in grid.get_node_ids()]
        if messages:
            self._whoami_pending = set(grid.push_messages(messages))

    def _record_whoami(self, reply: Message, failed: set[int]) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed.add(node)
            reason = (reply.error.reason or "").strip().splitlines()
            log(
                WARNING,
                "cloned-distillation: node %s failed whoami (code %s): %s",
                node,
                reply.error.code,
                reason[-1] if reason else "",
            )
            return
        pid = int(reply.content[METRICS]["partition-id"])
        self.node_of_partition[pid] = node

    def _collect_pushed_whoami(self, grid: Grid, failed: set[int], timeout: float) -> None:
        """Pull the answers to :meth:`request_node_map`'s queries for at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self._whoami_pending:
            for reply in grid.pull_messages(list(self._whoami_pending)):
                self._whoami_pending.discard(reply.metadata.reply_to_message_id)
                self._record_whoami(reply, failed)
            if not self._whoami_pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self._whoami_pending = set()

    def _map_nodes(self, grid: Grid) -> None:
        """Ask every node for its partition id (``query.whoami``).

        Answers to queries pushed earlier by :meth:`request_node_map` are collected first.
        Nodes are asked until every partition is mapped, or every connected node has answered
        (a node that answers with an error, e.g. because its data is missing, is logged and
        left out: its edge's rounds are skipped), or ``cd-round-timeout`` passes.
        """
        expected = self.config.num_partitions
        deadline = time.monotonic() + self.cd.round_timeout
        failed: set[int] = set()
        if self._whoami_pending:
            self._collect_pushed_whoami(grid, failed, timeout=60)
        while len(self.node_of_partition) < expected:
            node_ids = list(grid.get_node_ids())
            known = set(self.node_of_partition.values()) | failed
            messages = [self._whoami(grid, node) for node in node_ids if node not in known]
            for reply in grid.send_and_receive(messages, timeout=60) if messages else []:
                self._record_whoami(reply, failed)
            answered = set(self.node_of_partition.values()) | failed
            if (
                len(self.node_of_partition) >= expected
                or (len(node_ids) >= expected and answered >= set(node_ids))
                or time.monotonic() > deadline
            ):
                break
            time.sleep(1.0)
        log(
            INFO,
            "cloned-distillation: %s/%s edges mapped to nodes (%s failed)",
            len(self.node_of_partition),
            expected,
            len(failed),
        )

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message, to this round's edge, carrying the model it starts from."""
        if self.cd.is_control:
            self._current_edge = None
            return []
        if not self.node_of_partition:
            self._map_nodes(grid)
        edge = self.edge_for_round(server_round)
        self._current_edge = edge
        if edge not in self.node_of_partition:
            log(
                WARNING,
                "cloned-distillation: round %s: edge %s has no node; skipped",
                server_round,
                edge,
            )
            return []
        if self.cd.edge_init == "independent" and self.independent is not None:
            send = self._state(self.independent)
        else:
            send = arrays
        train_config = ConfigRecord(dict(config))
        train_config["server-round"] = server_round
        train_config["ensemble-size"] = self.cd.ensemble_size
        train_config["init"] = "scratch" if self.cd.edge_init == "scratch" else "received"
        train_config["init-seed"] = self.config.seed * 7_919 + server_round
        content = RecordDict({ARRAYS: send, CONFIG: train_config})
        self._current_round_sent = time.monotonic()
        return [
            grid.create_message(
                content, MessageType.TRAIN, self.node_of_partition[edge], str(server_round)
            )
        ]

    def _teachers_from_reply(self, reply: Message) -> list[EdgeKDModel]:
        """Load and validate every returned model; raise ValueError naming what is wrong."""
        if reply.has_error():
            raise ValueError(
                f"edge replied with error {reply.error.code}: "
                f"{(reply.error.reason or '').splitlines()[:1]}"
            )
        content = reply.content
        if METRICS not in content.metric_records:
            raise ValueError("reply has no 'metrics' record")
        raw_size = content[METRICS].get("ensemble-size", 1)
        if not isinstance(raw_size, int | float) or raw_size != self.cd.ensemble_size:
            raise ValueError(
                f"reply has ensemble-size {raw_size!r}, expected {self.cd.ensemble_size}"
            )
        size = int(raw_size)
        if size != self.cd.ensemble_size:
            raise ValueError(f"reply has ensemble-size {size}, expected {self.cd.ensemble_size}")
        reference = self.model.state_dict()
        teachers = []
        for index in range(size):
            key = member_key(index)
            if key not in content.array_records:
                raise ValueError(f"reply misses ensemble member {key!r}")
            state = content.array_records[key].to_torch_state_dict()
            if set(state) != set(reference):
                wrong = sorted(set(state) ^ set(reference))[:5]
                raise ValueError(f"member {key!r} has wrong keys, e.g. {wrong}")
            for name, tensor in state.items():
                if tensor.shape != reference[name].shape:
                    raise ValueError(
                        f"member {key!r} array {name!r} has shape "
                        f"{tuple(tensor.shape)}, expected {tuple(reference[name].shape)}"
                    )
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise ValueError(f"member {key!r} array {name!r} has NaN/inf values")
            teacher = build_experiment_model(self.config)
            teacher.load_state_dict(state, strict=True)
            teacher.eval()
            teachers.append(teacher)
        return teachers

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Phase 2: distil this edge's models and the memory into the core."""
        replies = list(replies)
        edge = self._current_edge
        metrics: dict[str, Any] = {"edge": edge if edge is not None else -1}
        if self.cd.is_control:
            return self._control_round(server_round, metrics)
        if not replies:
            log(
                WARNING,
                "cloned-distillation: round %s: no reply from edge %s; core unchanged",
                server_round,
                edge,
            )
            metrics["edge-status"] = "no-reply"
            self._log(server_round, metrics)
            return None, None
        try:
            teachers = self._teachers_from_reply(replies[0])
        except ValueError as err:
            log(
                WARNING,
                "cloned-distillation: round %s: rejected reply of edge %s: %s",
                server_round,
                edge,
                err,
            )
            metrics["edge-status"] = f"rejected: {err}"
            self._log(server_round, metrics)
            return None, None
        edge_metrics = replies[0].content[METRICS]
        metrics.update(
            {
                "edge-status": "ok",
                "edge-train-loss": float(edge_metrics.get("train-loss", math.nan)),
                "edge-train-acc": float(edge_metrics.get("train-acc", math.nan)),
                "edge-num-examples": int(edge_metrics.get("num-examples", 0)),
                "uplink-seconds": time.monotonic() - self._current_round_sent,
            }
        )
        metrics.update(self._distill_round(server_round, edge or 0, teachers))
        self._log(server_round, metrics)
        if metrics["edge-status"] != "ok":
            return None, None
        return self._state(self.model), MetricRecord(
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        )

    def _control_round(
        self, server_round: int, metrics: dict[str, Any]
    ) -> tuple[ArrayRecord, MetricRecord]:
        """No-teacher control: Phase 2's schedule with the cross-entropy term only."""
        assert self.pool is not None, "phase0() must run before the first round"
        acc_before = evaluate(self.model, self.test.x, self.test.y).accuracy
        no_teachers = torch.empty(0, len(self.pool.x), int(self.pool.y.max()) + 1)
        result = self._run_distill(server_round, no_teachers, torch.empty(0))
        acc_after = evaluate(self.model, self.test.x, self.test.y).accuracy
        log(
            INFO,
            "cloned-distillation: round %s (control, no teacher): core %.4f -> %.4f",
            server_round,
            acc_before,
            acc_after,
        )
        metrics.update(
            {
                "edge-status": "control",
                "core-acc-before": acc_before,
                "core-acc-after": acc_after,
                "core-train-acc": result.accuracy,
                "distill-loss": result.loss,
                "num-teachers": 0,
            }
        )
        self._log(server_round, metrics)
        return self._state(self.model), MetricRecord(
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        )

    def _run_distill(
        self, server_round: int, teacher_logits: torch.Tensor, weights: torch.Tensor
    ) -> TrainResult:
        """Phase 2 on the pool with this round's seed (no teachers: cross-entropy only)."""
        assert self.pool is not None, "phase0() must run before the first round"
        return distill(
            self.model,
            self.pool,
            teacher_logits,
            epochs=self.cd.distill_epochs,
            batch_size=self.config.batch_size,
            lr=self.cd.distill_lr,
            temperature=self.cd.temperature,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            teacher_weights=weights if len(weights) else None,
            seed=self.config.seed * 1_009 + server_round,
        )

    def detect(self, teachers: list[EdgeKDModel]) -> tuple[float, float, bool]:
        """Score a returned edge on the core data: (score, reference, suspect).

        The score is the accuracy of the edge's mean prediction on the server's core data.
        """
        logits = torch.stack([predict_logits(t, self.core.x) for t in teachers]).mean(0)
        score = float((logits.argmax(1) == self.core.y).float().mean())
        if self.accepted_scores:
            reference = float(np.median(self.accepted_scores))
        else:
            reference = evaluate(self.model, self.core.x, self.core.y).accuracy
        return score, reference, score < self.cd.detect_threshold * reference

    def _distill_round(
        self,
        server_round: int,
        edge: int,
        teachers: list[EdgeKDModel],
        *,
        staleness: int = 0,
        weight: float = 1.0,
    ) -> dict[str, Any]:
        """Detect, store the edge's teacher logits in memory and distil; return metrics."""
        assert self.pool is not None, "phase0() must run before the first round"
        metrics: dict[str, Any] = {"staleness": staleness, "teacher-weight": weight}
        test_logits = torch.stack([predict_logits(t, self.test.x) for t in teachers])
        logits = pool_logits(teachers, self.pool)
        if not (torch.isfinite(test_logits).all() and torch.isfinite(logits).all()):
            log(
                WARNING,
                "cloned-distillation: round %s edge %s: teacher outputs are not finite; rejected",
                server_round,
                edge,
            )
            metrics["edge-status"] = "rejected: non-finite teacher outputs"
            return metrics
        if self.cd.detect_policy != "off":
            score, reference, suspect = self.detect(teachers)
            metrics.update(
                {"detect-score": score, "detect-reference": reference, "suspect": int(suspect)}
            )
            if suspect:
                log(
                    WARNING,
                    "cloned-distillation: round %s edge %s is suspect: core-data acc "
                    "%.4f < %.2f x reference %.4f (policy %s)",
                    server_round,
                    edge,
                    score,
                    self.cd.detect_threshold,
                    reference,
                    self.cd.detect_policy,
                )
                if self.cd.detect_policy == "reject":
                    metrics["edge-status"] = "rejected: suspect"
                    return metrics
                if self.cd.detect_policy == "downweight":
                    weight *= self.cd.detect_downweight
                    metrics["teacher-weight"] = weight
            else:
                self.accepted_scores.append(score)
        teacher_accs = [float((lg.argmax(1) == self.test.y).float().mean()) for lg in test_logits]
        ensemble_pred = test_logits.mean(0).argmax(1)
        if self.cd.ensemble_mode == "average":
            logits = logits.mean(0, keepdim=True)
        self.memory.append(EdgeTeacher(server_round, edge, logits, teacher_accs, weight, staleness))
        student_before = predict_logits(self.model, self.test.x).argmax(1)
        acc_before = float((student_before == self.test.y).float().mean())
        before = prediction_consensus(ensemble_pred, student_before, self.test.y)
        stacked = torch.cat([entry.pool_logits for entry in self.memory])
        weights = torch.cat([torch.full((len(e.pool_logits),), e.weight) for e in self.memory])
        started = time.monotonic()
        result = self._run_distill(server_round, stacked, weights)
        distill_seconds = time.monotonic() - started
        student_after = predict_logits(self.model, self.test.x).argmax(1)
        acc_after = float((student_after == self.test.y).float().mean())
        after = prediction_consensus(ensemble_pred, student_after, self.test.y)
        log(
            INFO,
            "cloned-distillation: round %s edge %s: teachers %s, core %.4f -> %.4f "
            "(%s teachers from %s edges, %.1fs)",
            server_round,
            edge,
            " ".join(f"{a:.4f}" for a in teacher_accs),
            acc_before,
            acc_after,
            stacked.shape[0],
            len(self.memory),
            distill_seconds,
        )
        metrics.update(
            {
                "core-acc-before": acc_before,
                "core-acc-after": acc_after,
                "core-train-acc": result.accuracy,
                "distill-loss": result.loss,
                "distill-seconds": distill_seconds,
                "num-teachers": int(stacked.shape[0]),
                "memory-edges": len(self.memory),
                "teacher-acc-mean": sum(teacher_accs) / len(teacher_accs),
                "teacher-ensemble-acc": float((ensemble_pred == self.test.y).float().mean()),
                "teacher-accs": teacher_accs,
            }
        )
        metrics.update({f"before/{k}": v for k, v in before.items()})
        metrics.update({f"after/{k}": v for k, v in after.items()})
        metrics.update(consensus_change(before, after))
        return metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the core is evaluated centrally on the test split."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate (see :meth:`configure_evaluate`)."""
        return None

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        """Phase 0 on the core data, then Flower's round loop with one edge per round.

        ``initial_arrays`` is ignored: the core model is built and trained at the server. The
        nodes are asked for their partitions before Phase 0 and answer while it runs.
        """
        if not self.cd.is_control:
            self.request_node_map(grid)
        self.phase0()
        return super().start(
            grid,
            self._state(self.model),
            num_rounds,
            min(timeout, self.cd.round_timeout),
            train_config,
            evaluate_config,
            evaluate_fn,
        )


@register_strategy("cloned-distillation")
def build_cloned_distillation(context: StrategyContext) -> ClonedDistillation:
    """Factory for ``strategy = "cloned-distillation"`` (keys ``cd-*``)."""
    return ClonedDistillation(
        context.config,
        ClonedDistillationConfig.from_run_config(context.run_config),
        recorder=context.recorder,
    )
