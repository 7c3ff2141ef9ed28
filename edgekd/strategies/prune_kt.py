"""Filter pruning + layer-wise knowledge transfer: the cloud compresses, each edge adds a class.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (sections 3-5).

The ServerApp is the cloud. It holds the labelled core split (``core-fraction``) minus every
edge's new class (:mod:`edgekd.datasets.incremental`) and:

1. trains the teacher, the CIFAR ResNet of depth ``pk-teacher-depth``, on the old classes, once
   per seed (cached in ``cache-dir``);
2. computes the teacher's activation statistics on ``pk-stat-images`` core images, once, and
   for each edge's threshold ``P`` (``pk-thresholds``: one per edge, a weaker device a smaller
   ``P``) the compressed spec: activation widths, one block per group
   (:func:`edgekd.prune_kt_training.edge_specs`); a ``P`` whose widths would reach 0 leaves its
   edges out, logged;
3. trains each distinct compressed student from scratch on the old classes (cached);
4. sends every edge its student, the teacher and both architectures as data
   (``train.pk_transfer``, :mod:`edgekd.protocol.prune_kt`), recording the bytes; the edge
   appends an output for its new class, runs layer-wise transfer on its own data and reports
   its old- and new-class test accuracy before and after, and without KT.

One exchange (one server round); ``num-server-rounds`` is not used. ``prune_kt.json`` holds
the cloud's figures (per ``P``: widths, parameters, compression ratio, old-class test
accuracy) and every edge's report; round 1's metrics are the means over the edges that
completed the transfer, with ``old-retention`` = old-class accuracy after / before.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.cache import TrainingCache, run_description, state_digest
from edgekd.config import ExperimentConfig
from edgekd.datasets.incremental import check_new_classes, local_labels, old_classes
from edgekd.experiment import TensorData, core_data, load_bundle, test_data
from edgekd.models.pruned_resnet import (
    PrunedResNet,
    ResNetSpec,
    count_resnet_parameters,
    resnet_spec,
)
from edgekd.protocol import ARRAYS, CONFIG
from edgekd.protocol.prune_kt import (
    TEACHER_RECORD,
    TRANSFER_TYPE,
    TransferPlan,
    spec_entries,
    transfer_config,
)
from edgekd.prune_kt_training import (
    Schedule,
    edge_specs,
    split_accuracy,
    train_dependent,
    train_pruned,
)
from edgekd.seeds import derive_seed
from edgekd.strategies.common import (
    CentralEvaluation,
    FederationError,
    NodeMapper,
    RoundReports,
    StartDriven,
    content_bytes,
    error_reason,
    instruction,
    reply_metrics,
    scalar_metrics,
)
from edgekd.strategies.prune_kt_config import PruneKTConfig
from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = ["MEAN_KEYS", "PruneKT"]

#: Edge metrics averaged over the edges in the round's report.
MEAN_KEYS = (
    "old-acc-before",
    "new-acc-before",
    "old-acc-after",
    "new-acc-after",
    "old-acc-without-kt",
    "new-acc-without-kt",
    "old-retention",
    "transfer-seconds",
)


class PruneKT(CentralEvaluation, StartDriven, RoundReports, Strategy):
    """The cloud: teacher, per-edge compressed students, then on-device transfer per edge.

    Parameters
    ----------
    config : ExperimentConfig
        The shared run config (``core-fraction > 0``: the cloud's data).
    pk : PruneKTConfig
        The ``pk-*`` settings.

    Notes
    -----
    An edge must answer ``train.pk_transfer`` (:mod:`edgekd.clients.prune_kt`).
    """

    strategy_name: ClassVar[str] = "prune-kt"
    accuracy_keys: ClassVar[tuple[str, ...]] = (
        "old-acc-after",
        "new-acc-after",
        "old-acc-without-kt",
        "new-acc-without-kt",
    )
    central_evaluation: ClassVar[bool] = False

    def __init__(self, config: ExperimentConfig, pk: PruneKTConfig) -> None:
        self.config = config
        self.pk = pk
        bundle = load_bundle(config)
        check_new_classes(pk.new_classes, bundle.num_classes)
        self.old = old_classes(bundle.num_classes, pk.new_classes)
        self.nodes = NodeMapper(config.num_partitions, self.strategy_name)
        self.teacher: PrunedResNet | None = None
        self.students: dict[float, PrunedResNet] = {}
        self.spec_errors: dict[float, str] = {}
        self.cloud: dict[str, Any] = {}
        self.edges: dict[str, dict[str, Any]] = {}
        self._augment = (
            ("augment", config.augment),
            ("padding", core_data(config).padding),
            ("flip", bundle.image_size >= 16),
        )

    def summary(self) -> None:
        """Log the configuration."""
        pk = self.pk
        log(
            INFO,
            "\t├── Teacher: resnet%s, %s epochs, old classes %s",
            pk.teacher_depth,
            pk.teacher_epochs,
            list(self.old),
        )
        log(
            INFO,
            "\t├── Thresholds P: %s; students %s epochs from scratch",
            ", ".join(f"{p:g}" for p in pk.thresholds),
            pk.student_epochs,
        )
        log(
            INFO,
            "\t└── Edges: new classes %s, transfer %s epochs, lambdas %s",
            list(pk.new_classes),
            pk.transfer_epochs,
            pk.lambdas,
        )

    # ------------------------------------------------------------------ the cloud's training
    def _old_only(self, data: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(local_labels(data.y.numpy(), self.old))
        keep = labels >= 0
        return data.x[keep], labels[keep]

    def _schedule(self, epochs: int, lr: float, seed: int) -> Schedule:
        cfg = self.config
        return Schedule(
            epochs, cfg.batch_size, lr, cfg.momentum, cfg.weight_decay, seed, self._augment
        )

    def _train_cached(
        self,
        kind: str,
        spec: ResNetSpec,
        data: tuple[torch.Tensor, torch.Tensor],
        schedule: Schedule,
    ) -> PrunedResNet:
        init_seed = derive_seed("pk-init", self.config.seed, member=int(kind.endswith("student")))
        description = {
            "config": run_description(self.config, exclude=("strategy", "model")),
            "new-classes": list(self.pk.new_classes),
            "spec": spec_entries(spec, "model"),
            "epochs": schedule.epochs,
            "lr": schedule.lr,
            "seed": schedule.seed,
            "init-seed": init_seed,
        }

        dependent = kind.endswith("student") and self.pk.dependent_student
        if dependent:
            description["dependent-on"] = state_digest(self._teacher().state_dict())
            description["lambdas"] = list(self.pk.lambdas)

        def train() -> dict[str, Any]:
            if dependent:
                model = train_dependent(
                    spec,
                    len(self.old),
                    *data,
                    schedule,
                    self._teacher(),
                    init_seed=init_seed,
                    lambdas=tuple(self.pk.lambdas),
                    progress=f"dependent {kind}",
                )
            else:
                model = train_pruned(
                    spec, len(self.old), *data, schedule, init_seed=init_seed, progress=kind
                )
            return {"state": model.state_dict()}

        stored = TrainingCache(self.config.cache_dir).get_or_compute(kind, description, train)
        model = PrunedResNet(spec, len(self.old), int(data[0].shape[1]))
        model.load_state_dict(stored["state"])
        return model.eval()

    def _teacher(self) -> PrunedResNet:
        """The trained teacher (:meth:`prepare` trains it before any student)."""
        if self.teacher is None:
            raise RuntimeError(f"{self.strategy_name}: the teacher is trained before students")
        return self.teacher

    def _figures(self, model: PrunedResNet, test: tuple[torch.Tensor, torch.Tensor]) -> dict:
        params = count_resnet_parameters(model.spec, len(self.old), int(test[0].shape[1]))
        acc, _ = split_accuracy(model, *test, len(self.old))
        return {"params": params, "test-acc-old": acc, **spec_entries(model.spec, "spec")}

    def prepare(self) -> None:
        """Train the teacher, prune it for every threshold and train the students."""
        pk, cfg = self.pk, self.config
        data = self._old_only(core_data(cfg))
        if len(data[1]) < 2:
            raise ValueError(
                f"{self.strategy_name} needs old-class core images "
                f"(core-fraction > 0), got {len(data[1])}"
            )
        test = self._old_only(test_data(cfg))
        seed = derive_seed("pk-teacher", cfg.seed)
        self.teacher = self._train_cached(
            "prune-kt-teacher",
            resnet_spec(pk.teacher_depth),
            data,
            self._schedule(pk.teacher_epochs, pk.teacher_lr, seed),
        )
        order = np.random.default_rng(derive_seed("pk-stats", cfg.seed)).permutation(len(data[1]))
        images = data[0][torch.as_tensor(order[: pk.stat_images])]
        specs, self.spec_errors = edge_specs(
            self.teacher, images, pk.thresholds, min_width=pk.min_width or None
        )
        teacher = self._figures(self.teacher, test)
        self.cloud = {
            "teacher": teacher,
            "core-train": len(data[1]),
            "students": {},
            "errors": {f"{p:g}": e for p, e in self.spec_errors.items()},
        }
        for threshold, spec in specs.items():
            schedule = self._schedule(
                pk.student_epochs,
                pk.student_lr,
                derive_seed("pk-student", cfg.seed, member=round(1000 * threshold)),
            )
            student = self._train_cached("prune-kt-student", spec, data, schedule)
            self.students[threshold] = student
            figures = self._figures(student, test)
            figures["ratio"] = teacher["params"] / figures["params"]
            self.cloud["students"][f"{threshold:g}"] = figures
            log(
                INFO,
                "%s: P=%g student %s parameters (%.1fx smaller), old-class test acc %.4f",
                self.strategy_name,
                threshold,
                figures["params"],
                figures["ratio"],
                figures["test-acc-old"],
            )
        for threshold, reason in self.spec_errors.items():
            log(WARNING, "%s: P=%g gives no student: %s", self.strategy_name, threshold, reason)

    # ------------------------------------------------------------------ the exchange
    def _plan(self, position: int, threshold: float) -> TransferPlan:
        cfg, pk = self.config, self.pk
        assert self.teacher is not None
        return TransferPlan(
            student=self.students[threshold].spec,
            teacher=self.teacher.spec,
            old_classes=self.old,
            new_class=pk.new_classes[position],
            threshold=threshold,
            epochs=pk.transfer_epochs,
            batch_size=cfg.batch_size,
            lr=pk.transfer_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            lambdas=(pk.lambdas[0], pk.lambdas[1], pk.lambdas[2]),
            old_fraction=pk.old_fraction,
            seed=derive_seed("pk-edge", cfg.seed, partition=position),
            baseline=pk.baseline,
        )

    def _edge_message(
        self, position: int, node: int, teacher: ArrayRecord
    ) -> tuple[Message | None, dict[str, Any]]:
        """The message for the edge at ``position``, or None and why it is left out."""
        if position >= len(self.pk.new_classes):
            return None, {
                "status": f"skipped: no new class for edge {position} "
                f"(pk-new-classes has {len(self.pk.new_classes)})"
            }
        threshold = self.pk.threshold_of(position)
        entry: dict[str, Any] = {"threshold": threshold, "new-class": self.pk.new_classes[position]}
        if threshold not in self.students:
            return None, {**entry, "status": f"skipped: {self.spec_errors[threshold]}"}
        student = ArrayRecord(self.students[threshold].state_dict())
        content = RecordDict(
            {
                ARRAYS: student,
                TEACHER_RECORD: teacher,
                CONFIG: ConfigRecord(transfer_config(self._plan(position, threshold))),
            }
        )
        message = instruction(content, TRANSFER_TYPE, node, "1")
        entry.update(
            {
                "status": f"no reply within {self.pk.round_timeout:g} s",
                "student-bytes": student.count_bytes(),
                "teacher-bytes": teacher.count_bytes(),
                "downlink-bytes": content_bytes(message),
            }
        )
        return message, entry

    def _exchange(self, grid: Grid) -> None:
        assert self.teacher is not None
        teacher = ArrayRecord(self.teacher.state_dict())
        messages = []
        for position, node in enumerate(self.nodes.edges):
            message, entry = self._edge_message(position, node, teacher)
            self.edges[str(self.nodes.label(node))] = entry
            if message is None:
                log(
                    WARNING,
                    "%s: edge %s %s",
                    self.strategy_name,
                    self.nodes.label(node),
                    entry["status"],
                )
            else:
                messages.append(message)
        for reply in grid.send_and_receive(messages, timeout=self.pk.round_timeout):
            edge = self.edges[str(self.nodes.label(reply.metadata.src_node_id))]
            reason = error_reason(reply)
            if reason is not None:
                edge["status"] = reason
                log(
                    WARNING,
                    "%s: edge %s left out: %s",
                    self.strategy_name,
                    self.nodes.label(reply.metadata.src_node_id),
                    reason,
                )
                continue
            metrics = {k: v for k, v in reply_metrics(reply).items() if k != "partition-id"}
            if metrics.get("old-acc-before"):
                metrics["old-retention"] = metrics["old-acc-after"] / metrics["old-acc-before"]
            edge.update(metrics, status="ok", **{"uplink-bytes": content_bytes(reply)})

    def _round_row(self) -> dict[str, Any]:
        ok = [e for e in self.edges.values() if e["status"] == "ok"]
        row: dict[str, Any] = {
            "edges-ok": len(ok),
            "edges-skipped": len(self.edges) - len(ok),
            "downlink-bytes": sum(e.get("downlink-bytes", 0) for e in ok),
            "teacher-test-acc-old": self.cloud["teacher"]["test-acc-old"],
        }
        for key in MEAN_KEYS:
            values = [float(e[key]) for e in ok if isinstance(e.get(key), int | float)]
            values = [v for v in values if v == v]  # NaN: no test images of that kind
            if values:
                row[key] = statistics.fmean(values)
        return row

    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Train teacher and students, then one transfer exchange with every edge.

        ``initial_arrays`` and ``num_rounds`` are ignored; ``evaluate_fn`` is called once,
        after the exchange (round 1), to record the report.
        """
        log(INFO, "%s: settings", self.strategy_name)
        self.summary()
        self.nodes.request(grid)
        self.prepare()
        self.nodes.map(grid, timeout=self.pk.round_timeout)
        self._exchange(grid)
        row = self._round_row()
        self.report(1, row)
        log(
            INFO,
            "%s: %s",
            self.strategy_name,
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
        )
        assert self.teacher is not None
        arrays = ArrayRecord(self.teacher.state_dict())
        result = Result(arrays=arrays)
        result.train_metrics_clientapp[1] = scalar_metrics(row)
        evaluate_fn = options.get("evaluate_fn")
        if evaluate_fn is not None:
            evaluate_fn(1, arrays)
        if not row["edges-ok"]:
            raise FederationError(
                f"{self.strategy_name}: no edge completed the transfer "
                f"({len(self.nodes.edges)} edge(s)): "
                + "; ".join(f"{k}: {e['status']}" for k, e in self.edges.items())
            )
        return result

    def run_files(self) -> Mapping[str, Any]:
        """``prune_kt.json``: the cloud's figures and every edge's report."""
        return {
            "prune_kt.json": {
                "old-classes": list(self.old),
                "cloud": self.cloud,
                "edges": self.edges,
            }
        }


@register_strategy("prune-kt", sections={"pk-": PruneKTConfig})
def build_prune_kt(context: StrategyContext) -> PruneKT:
    """Factory for ``strategy = "prune-kt"`` (keys ``pk-*``)."""
    return PruneKT(context.config, PruneKTConfig.from_run_config(context.run_config))
