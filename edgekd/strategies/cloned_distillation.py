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

The settings (``cd-*``) and the variant names are in
:mod:`edgekd.strategies.cloned_distillation_config`; the message format in
:mod:`edgekd.protocol.cloned_distillation`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import deque
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.config import ExperimentConfig
from edgekd.distillation import (
    DistillPool,
    FeatureTeachers,
    distill,
    make_distill_pool,
    pool_logits,
)
from edgekd.experiment import TensorData, build_experiment_model, core_data, test_data
from edgekd.losses import manifold_term
from edgekd.metrics import consensus_change, prediction_consensus
from edgekd.models import EdgeKDModel
from edgekd.protocol import ARRAYS, CONFIG
from edgekd.seeds import derive_seed
from edgekd.strategies.cloned_distillation_config import (
    ClonedDistillationConfig,
    parse_variant,
)
from edgekd.strategies.common import (
    CentralEvaluation,
    FederationError,
    NodeMapper,
    RoundReports,
    instruction,
    reply_members,
    reply_metrics,
    scalar_metrics,
)
from edgekd.strategies.core_model import train_on_core
from edgekd.strategies.registry import StrategyContext, register_strategy
from edgekd.strategies.rounds import run_rounds
from edgekd.strategies.teacher_memory import EdgeTeacher, TeacherMemory, TeacherOutputs
from edgekd.training import TrainResult, evaluate, predict_logits

__all__ = ["ClonedDistillation", "ClonedDistillationConfig", "EdgeTeacher", "parse_variant"]

NAME = "cloned-distillation"


class ClonedDistillation(CentralEvaluation, RoundReports, Strategy):
    """One edge per round; the returned edge models are distilled into the core model.

    Parameters
    ----------
    config : ExperimentConfig
        Shared run config (dataset, model, split with ``core-fraction`` > 0, edge schedule:
        ``local-epochs``, ``batch-size``, ``lr``, ``momentum``, ``weight-decay``).
    cd_config : ClonedDistillationConfig
        The method's own settings (variant, P, M, Phase 0/2 schedules, temperature, order).

    Notes
    -----
    The client must implement :mod:`edgekd.protocol.cloned_distillation`: train the received
    arrays (or a fresh model when ``init == "scratch"``) ``ensemble-size`` times with different
    batch orders and return all members in one reply; a plain Flower ClientApp's reply (one
    model in ``arrays``, ``num-examples`` in its metrics) is one teacher. The edges are the
    grid's nodes (:class:`edgekd.strategies.common.NodeMapper`), in partition order where
    they answer ``query.whoami``. The core data and the core model never leave the server;
    only edge models travel. Per round, :meth:`round_report` holds the edge (``edge``: its
    index in the edge order, ``edge-node``), its status (``ok`` or why it failed), the core
    accuracy before/after distillation, the teacher accuracies and the consensus statistics.
    A run in which no edge returned a usable model in any round raises
    :class:`edgekd.strategies.common.FederationError` naming the reasons.
    """

    strategy_name: ClassVar[str] = NAME

    def __init__(self, config: ExperimentConfig, cd_config: ClonedDistillationConfig) -> None:
        if config.core_fraction <= 0:
            raise ValueError(
                f"cloned distillation needs a core split: core-fraction must be > 0, got "
                f"{config.core_fraction}"
            )
        self.config = config
        self.cd = cd_config
        self.core: TensorData = core_data(config)
        self.test: TensorData = test_data(config)
        self.model: EdgeKDModel = build_experiment_model(config, seed=config.seed)
        if cd_config.distill_loss == "nmd" and not hasattr(self.model, "forward_stages"):
            raise ValueError(
                f"cd-distill-loss 'nmd' needs residual-stage features: model "
                f"{config.model!r} has no forward_stages (use a CIFAR ResNet)"
            )
        self.independent: EdgeKDModel | None = None
        self.teachers = TeacherMemory(cd_config, self.core, self.test)
        self.nodes = NodeMapper(config.num_partitions, NAME)
        self.pool: DistillPool | None = None
        self._flip = self.test.x.shape[-1] >= 16
        self._current_edge: int | None = None
        self._current_round_sent: float = 0.0
        self.edges_trained = 0
        self.edge_failures: list[str] = []
        self.resumed_round = 0  # the round restored from a checkpoint (0: a fresh run)

    @property
    def memory(self) -> deque[EdgeTeacher]:
        """The remembered edges, oldest first (at most ``cd-memory-size``)."""
        return self.teachers.entries

    @property
    def node_of_partition(self) -> dict[int, int]:
        """Partition id -> node id of the edges mapped so far."""
        return self.nodes.node_of_partition

    def summary(self) -> None:
        """Log the configuration."""
        cd = self.cd
        log(INFO, "\t├── Variant: %s (edge init %s)", cd.variant or "custom", cd.edge_init)
        log(INFO, "\t├── P=%s (%s), M=%s", cd.ensemble_size, cd.ensemble_mode, cd.memory_size)
        log(INFO, "\t├── Phase 0: %s epochs, lr %s", cd.core_epochs, cd.core_lr)
        log(
            INFO,
            "\t├── Phase 2: %s epochs, lr %s, t=%s, loss %s",
            cd.distill_epochs,
            cd.distill_lr,
            cd.temperature,
            cd.distill_loss
            if cd.distill_loss == "kl"
            else f"nmd ({cd.manifold}, d={cd.manifold_dim}, weights {cd.nmd_weights})",
        )
        log(
            INFO,
            "\t└── Core: %s examples; %s edges, %s",
            len(self.core),
            self.config.num_partitions,
            cd.edge_order,
        )

    def edge_for_round(self, server_round: int) -> int:
        """Index of the edge met in ``server_round`` (1-based): each edge once per pass.

        Edges are counted once the nodes are mapped (before: ``num-partitions``); with every
        node answering ``query.whoami`` for partitions 0..N-1 the index is the partition id.
        """
        edges = len(self.nodes.edges) if self.nodes.mapped else self.config.num_partitions
        pass_index, position = divmod(server_round - 1, edges)
        if self.cd.edge_order == "round-robin":
            return position
        rng = np.random.default_rng([self.config.seed, pass_index])
        return int(rng.permutation(edges)[position])

    def _state(self, model: torch.nn.Module) -> ArrayRecord:
        return ArrayRecord(model.state_dict())

    def _train_on_core(self, model: torch.nn.Module, seed: int, progress: str) -> float:
        return train_on_core(
            model,
            self.core,
            self.config,
            epochs=self.cd.core_epochs,
            lr=self.cd.core_lr,
            seed=seed,
            flip=self._flip,
            progress=progress,
        )

    def phase0(self) -> None:
        """Train the core (and, for I-variants, the independent model) on the core data."""
        started = time.monotonic()
        log(
            INFO,
            "cloned-distillation: Phase 0, %s epochs on %s core examples",
            self.cd.core_epochs,
            len(self.core),
        )
        self._train_on_core(self.model, seed=self.config.seed, progress="Phase 0: core model")
        if self.cd.edge_init == "independent":
            seed = self.config.seed + self.cd.independent_seed_offset
            self.independent = build_experiment_model(self.config, seed=seed)
            self._train_on_core(self.independent, seed=seed, progress="Phase 0: independent model")
        self.pool = self._make_pool()
        acc = evaluate(self.model, self.test.x, self.test.y).accuracy
        log(
            INFO,
            "cloned-distillation: Phase 0 done in %.1fs, core test-acc %.4f",
            time.monotonic() - started,
            acc,
        )

    def _make_pool(self) -> DistillPool:
        """The distillation pool: seeded, so a resumed run rebuilds the same one."""
        return make_distill_pool(
            self.core.x,
            self.core.y,
            views=self.cd.distill_views or max(1, self.cd.distill_epochs),
            augment=self.config.augment,
            padding=self.core.padding,
            flip=self._flip,
            seed=derive_seed("distill-pool", self.config.seed),
        )

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs: the core (and independent) model, the temporal memory
        (each edge's cached teacher logits) and the detection statistics."""
        return {
            "model": self.model.state_dict(),
            "independent": None if self.independent is None else self.independent.state_dict(),
            "memory": [dataclasses.asdict(entry) for entry in self.memory],
            "accepted-scores": list(self.teachers.accepted_scores),
            "edges-trained": self.edges_trained,
        }

    def restore_checkpoint(self, state: dict[str, Any], server_round: int) -> None:
        """Load :meth:`checkpoint_state`; :meth:`start` then goes on after ``server_round``."""
        self.model.load_state_dict(state["model"], strict=True)
        if state["independent"] is not None:
            seed = self.config.seed + self.cd.independent_seed_offset
            self.independent = build_experiment_model(self.config, seed=seed)
            self.independent.load_state_dict(state["independent"], strict=True)
        self.memory.clear()
        self.memory.extend(EdgeTeacher(**entry) for entry in state["memory"])
        self.teachers.accepted_scores = [float(v) for v in state["accepted-scores"]]
        self.edges_trained = int(state.get("edges-trained", 0))
        self.pool = self._make_pool()
        self.resumed_round = server_round

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message, to this round's edge, carrying the model it starts from."""
        if self.cd.is_control:
            self._current_edge = None
            return []
        if not self.nodes.mapped:
            self.nodes.map(grid, self.cd.round_timeout)
        if not self.nodes.edges:
            self._current_edge = None
            log(WARNING, "%s: round %s: no node is connected; skipped", NAME, server_round)
            return []
        edge = self.edge_for_round(server_round)
        self._current_edge = edge
        if self.cd.edge_init == "independent" and self.independent is not None:
            send = self._state(self.independent)
        else:
            send = arrays
        train_config = ConfigRecord(dict(config))
        train_config["server-round"] = server_round
        train_config["ensemble-size"] = self.cd.ensemble_size
        train_config["init"] = "scratch" if self.cd.edge_init == "scratch" else "received"
        train_config["init-seed"] = derive_seed(
            "edge-init", self.config.seed, server_round=server_round
        )
        content = RecordDict({ARRAYS: send, CONFIG: train_config})
        self._current_round_sent = time.monotonic()
        node = self.nodes.edges[edge]
        return [instruction(content, MessageType.TRAIN, node, str(server_round))]

    def _teachers_from_reply(self, reply: Message) -> list[EdgeKDModel]:
        """Load and validate every returned model; raise ValueError naming what is wrong.

        Counts the edges that returned usable models and remembers why the others failed
        (:meth:`check_edges_trained`).
        """
        teachers = []
        try:
            states = reply_members(reply, self.cd.ensemble_size, self.model.state_dict())
        except ValueError as err:
            self.edge_failures.append(str(err))
            raise
        self.edges_trained += 1
        for state in states:
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
            metrics.update(self._control_round(server_round))
        elif edge is None:
            metrics["edge-status"] = "no-edge: no node is connected"
            self.edge_failures.append("no node is connected")
        elif not replies:
            log(WARNING, "%s: round %s: no reply from edge %s", NAME, server_round, edge)
            metrics["edge-status"] = "no-reply"
            self.edge_failures.append(f"no reply from edge {edge} before the round timeout")
        else:
            metrics["edge-node"] = str(replies[0].metadata.src_node_id)
            metrics.update(self._use_reply(server_round, edge or 0, replies[0]))
        self.report(server_round, metrics)
        if metrics["edge-status"] not in {"ok", "control", "excluded: suspect"}:
            return None, None
        return self._state(self.model), scalar_metrics(metrics)

    def _use_reply(self, server_round: int, edge: int, reply: Message) -> dict[str, Any]:
        """Validate the edge's reply and distil it; the round's metrics."""
        try:
            teachers = self._teachers_from_reply(reply)
        except ValueError as err:
            log(WARNING, "%s: round %s: rejected edge %s: %s", NAME, server_round, edge, err)
            return {"edge-status": f"rejected: {err}"}
        edge_metrics = reply_metrics(reply)
        metrics: dict[str, Any] = {
            "edge-status": "ok",
            "edge-train-loss": float(edge_metrics.get("train-loss", math.nan)),
            "edge-train-acc": float(edge_metrics.get("train-acc", math.nan)),
            "edge-num-examples": int(edge_metrics.get("num-examples", 0)),
            "uplink-seconds": time.monotonic() - self._current_round_sent,
        }
        metrics.update(self._distill_round(server_round, edge, teachers))
        return metrics

    def _control_round(self, server_round: int) -> dict[str, Any]:
        """No-teacher control: Phase 2's schedule with the cross-entropy term only."""
        assert self.pool is not None, "phase0() must run before the first round"
        acc_before = evaluate(self.model, self.test.x, self.test.y).accuracy
        no_teachers = torch.empty(0, len(self.pool.x), int(self.pool.y.max()) + 1)
        result = self._run_distill(server_round, no_teachers, torch.empty(0))
        acc_after = evaluate(self.model, self.test.x, self.test.y).accuracy
        log(
            INFO,
            "%s: round %s (control, no teacher): core %.4f -> %.4f",
            NAME,
            server_round,
            acc_before,
            acc_after,
        )
        return {
            "edge-status": "control",
            "core-acc-before": acc_before,
            "core-acc-after": acc_after,
            "core-train-acc": result.accuracy,
            "distill-loss": result.loss,
            "num-teachers": 0,
        }

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
            seed=derive_seed("distill", self.config.seed, server_round=server_round),
            progress=f"distillation (round {server_round})",
            feature_teachers=self._feature_teachers() if len(weights) else None,
        )

    def _feature_teachers(self) -> FeatureTeachers | None:
        """With ``cd-distill-loss = "nmd"``: the remembered models and the manifold term."""
        if self.cd.distill_loss != "nmd":
            return None
        states, weights = self.teachers.feature_states()
        models = []
        for state in states:
            model = build_experiment_model(self.config)
            model.load_state_dict(state, strict=True)
            models.append(model)
        term = functools.partial(
            manifold_term,
            stage_weights=self.cd.nmd_weights,
            manifold=self.cd.manifold,
            dim=self.cd.manifold_dim,
            neighbors=self.cd.neighbors,
        )
        return FeatureTeachers(models, weights, term)

    # ------------------------------------------------------------------ Phase 2, step by step
    def _distill_round(
        self,
        server_round: int,
        edge: int,
        teachers: list[EdgeKDModel],
        *,
        staleness: int = 0,
        weight: float = 1.0,
    ) -> dict[str, Any]:
        """Phase 2 for one returned edge: detect, remember, distil, report (its metrics)."""
        assert self.pool is not None, "phase0() must run before the first round"
        metrics: dict[str, Any] = {"staleness": staleness, "teacher-weight": weight}
        outputs = TeacherOutputs(
            torch.stack([predict_logits(t, self.test.x) for t in teachers]),
            pool_logits(teachers, self.pool),
        )
        if not outputs.finite:
            log(WARNING, "%s: round %s edge %s: non-finite outputs", NAME, server_round, edge)
            metrics["edge-status"] = "rejected: non-finite teacher outputs"
            return metrics
        if self.cd.detect_policy != "off":
            metrics.update(self.teachers.screen(server_round, edge, self.model, teachers))
            if metrics.get("edge-status") == "rejected: suspect":
                return metrics
            if metrics.pop("exclude", False):
                metrics.update(self._distil_without(server_round, edge, outputs))
                return metrics
            weight *= metrics.pop("weight-factor", 1.0)
            metrics["teacher-weight"] = weight
        teacher_accs = self.teachers.remember(
            server_round,
            edge,
            outputs,
            weight,
            staleness,
            models=teachers if self.cd.distill_loss == "nmd" else (),
        )
        metrics.update(self._distil(server_round, edge, outputs.test_logits, teacher_accs))
        return metrics

    def _distil_without(
        self, server_round: int, edge: int, outputs: TeacherOutputs
    ) -> dict[str, Any]:
        """Policy "exclude": Phase 2 on the memory without this (suspect) edge's teachers,
        cross-entropy only when the memory is empty; its teachers' accuracies are recorded."""
        teacher_accs = self.teachers.test_accuracies(outputs)
        if self.memory:
            metrics = self._distil(server_round, edge, outputs.test_logits, teacher_accs)
        else:
            metrics = self._control_round(server_round)
            metrics["teacher-accs"] = teacher_accs
            metrics["teacher-acc-mean"] = sum(teacher_accs) / len(teacher_accs)
        metrics["edge-status"] = "excluded: suspect"
        return metrics

    def _distil(
        self, server_round: int, edge: int, test_logits: torch.Tensor, teacher_accs: list[float]
    ) -> dict[str, Any]:
        """Distil the memory into the core; report accuracies and consensus statistics."""
        ensemble_pred = test_logits.mean(0).argmax(1)
        student_before = predict_logits(self.model, self.test.x).argmax(1)
        acc_before = float((student_before == self.test.y).float().mean())
        before = prediction_consensus(ensemble_pred, student_before, self.test.y)
        stacked, weights = self.teachers.stacked()
        started = time.monotonic()
        result = self._run_distill(server_round, stacked, weights)
        distill_seconds = time.monotonic() - started
        student_after = predict_logits(self.model, self.test.x).argmax(1)
        acc_after = float((student_after == self.test.y).float().mean())
        after = prediction_consensus(ensemble_pred, student_after, self.test.y)
        log(
            INFO,
            "%s: round %s edge %s: teachers %s, core %.4f -> %.4f (%s teachers from %s edges, "
            "%.1fs)",
            NAME,
            server_round,
            edge,
            " ".join(f"{a:.4f}" for a in teacher_accs),
            acc_before,
            acc_after,
            stacked.shape[0],
            len(self.memory),
            distill_seconds,
        )
        return {
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
            **{f"before/{k}": v for k, v in before.items()},
            **{f"after/{k}": v for k, v in after.items()},
            **consensus_change(before, after),
        }

    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Phase 0 on the core data, then Flower's round loop with one edge per round.

        ``initial_arrays`` is ignored: the core model is built and trained at the server.
        ``options`` are Flower's other ``start`` arguments, by keyword (``timeout`` is capped
        at ``cd-round-timeout``). The nodes are asked for their partitions before Phase 0 and
        answer while it runs. After :meth:`restore_checkpoint` it continues with the next
        round (:func:`edgekd.strategies.rounds.run_rounds`) instead.
        """
        if not self.cd.is_control:
            self.nodes.request(grid)
        timeout = min(options.pop("timeout", 3600), self.cd.round_timeout)
        if self.resumed_round:  # restored from a checkpoint: no Phase 0, no round 0
            first = self.resumed_round + 1
            arrays = self._state(self.model)
            result = run_rounds(self, grid, arrays, first_round=first, timeout=timeout, **options)
        else:
            self.phase0()
            result = super().start(grid, self._state(self.model), timeout=timeout, **options)
        self.check_edges_trained(options.get("num_rounds", 3))
        return result

    def check_edges_trained(self, num_rounds: int) -> None:
        """Raise :class:`FederationError` when no edge returned a usable model in any round.

        The control variant contacts no edge and never fails here; the count of trained
        edges is part of the checkpoint, so a resumed run is judged over all its rounds.
        """
        if self.cd.is_control or self.edges_trained > 0 or num_rounds < 1:
            return
        reasons = list(dict.fromkeys(self.edge_failures))
        more = f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
        raise FederationError(
            f"{self.strategy_name}: no edge returned a model in any of {num_rounds} round(s) "
            f"({len(self.nodes.edges)} edge(s)): {'; '.join(reasons[:3]) or 'no reply'}{more}"
        )


@register_strategy("cloned-distillation", sections={"cd-": ClonedDistillationConfig})
def build_cloned_distillation(context: StrategyContext) -> ClonedDistillation:
    """Factory for ``strategy = "cloned-distillation"`` (keys ``cd-*``)."""
    return ClonedDistillation(
        context.config, ClonedDistillationConfig.from_run_config(context.run_config)
    )
