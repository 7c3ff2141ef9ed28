"""Cloud-edge distillation with calibrated checkpoints and confidence offloading.

Paper: "An Efficient and Robust Cloud-Based Deep Learning With Knowledge Distillation",
Z. Wang et al., IEEE Transactions on Cloud Computing 11(2), 2023,
https://doi.org/10.1109/TCC.2022.3160129 (Algorithm 1).

The ServerApp is the cloud. It holds a labelled core split (``core-fraction``) and:

1. trains the teacher (``ce-teacher-model``) on the core split minus a validation part, once
   per seed (cached in ``cache-dir``);
2. distils the student (the run's ``model``) with ``ce-loss`` (CE, ST, AT, FSP or NMD) and keeps
   the checkpoint with the lowest validation ECE among those within ``ce-select-tolerance`` of
   the best validation accuracy (:func:`edgekd.cloud_edge_training.select_checkpoint`);
3. sends the student to every edge and, for each ``sigma`` of ``ce-sigmas`` (one server round
   each, ``sigma = 1`` first: it measures the cloud-only accuracy), lets each edge run it on its
   own data stream and offload the samples whose top-1 minus top-2 probability is below
   ``sigma``; the teacher answers them and the edge scores the answers.

Round ``r`` reports the offload rate, the offloaded bytes, the edge-only, cloud-only and
system accuracy summed over the edges, and ``cloud_edge.json`` holds them per edge, with the
teacher's and the student's test accuracy and ECE (selected and last checkpoint). Settings:
:mod:`edgekd.strategies.cloud_edge_config`; messages: :mod:`edgekd.protocol.cloud_edge`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.cache import TrainingCache, run_description, state_digest
from edgekd.cloud_edge_training import FEATURE_LOSSES, DistillOutcome, distil_student
from edgekd.config import ExperimentConfig
from edgekd.datasets import to_tensors
from edgekd.experiment import build_experiment_model, core_data, load_bundle, test_data
from edgekd.metrics import expected_calibration_error
from edgekd.protocol import ARRAYS, CONFIG
from edgekd.protocol.cloud_edge import (
    ANSWER_RECORD,
    ANSWER_TYPE,
    ANSWERED,
    CLOUD_CORRECT,
    EDGE_CORRECT,
    EDGE_CORRECT_KEPT,
    OFFLOAD_BYTES,
    OFFLOAD_RECORD,
    OFFLOAD_TYPE,
    OFFLOADED,
    SIGMA,
    answer_record,
    read_offload,
)
from edgekd.protocol.common import NUM_EXAMPLES
from edgekd.seeds import derive_seed
from edgekd.strategies.cloud_edge_config import CloudEdgeConfig
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
)
from edgekd.strategies.registry import StrategyContext, register_strategy
from edgekd.training import predict_logits, train_supervised

__all__ = ["CloudEdge", "sweep_order"]


def sweep_order(sigmas: Iterable[float]) -> list[float]:
    """The exchange order: ``sigma = 1`` (cloud-only accuracy) first, then ascending."""
    rest = sorted(s for s in set(sigmas) if s != 1.0)
    return [1.0, *rest]


class CloudEdge(CentralEvaluation, StartDriven, RoundReports, Strategy):
    """The cloud of Algorithm 1: distil a calibrated student, answer the edges' unsure samples.

    Parameters
    ----------
    config : ExperimentConfig
        The shared run config (``model`` is the student; ``core-fraction > 0``).
    ce : CloudEdgeConfig
        The ``ce-*`` settings.

    Notes
    -----
    An edge must answer ``query.ce_offload`` and ``query.ce_answer``
    (:mod:`edgekd.clients.cloud_edge`). ``num-server-rounds`` is not used: there is one round
    per threshold of the sweep.
    """

    strategy_name: ClassVar[str] = "cloud-edge"
    accuracy_keys: ClassVar[tuple[str, ...]] = ("test-acc", "system-acc", "edge-acc", "cloud-acc")

    def __init__(self, config: ExperimentConfig, ce: CloudEdgeConfig) -> None:
        self.config = config
        self.ce = ce
        self.nodes = NodeMapper(config.num_partitions, self.strategy_name)
        self.test = test_data(config)
        self.teacher: torch.nn.Module | None = None
        self.student = build_experiment_model(config, seed=derive_seed("ce-student", config.seed))
        self.cloud: dict[str, Any] = {}
        self.sweep: list[dict[str, Any]] = []
        self.cloud_acc: float | None = None
        # augmentation as in cloned distillation: horizontal flips only for images >= 16 px
        core = core_data(config)
        self._augment = {
            "augment": config.augment,
            "padding": core.padding,
            "flip": self.test.x.shape[-1] >= 16,
        }
        if ce.loss in FEATURE_LOSSES:
            teacher = build_experiment_model(config, name=ce.teacher_model)
            for role, model in (("student", self.student), ("ce-teacher-model", teacher)):
                if not hasattr(model, "forward_stages"):
                    raise ValueError(
                        f"ce-loss {ce.loss!r} needs per-stage features, but the {role} "
                        f"{type(model).__name__} has none: use CIFAR ResNets (resnet8/20/...)"
                    )

    def summary(self) -> None:
        """Log the configuration."""
        ce = self.ce
        log(
            INFO,
            "\t├── Teacher: %s, %s epochs, lr %s",
            ce.teacher_model,
            ce.teacher_epochs,
            ce.teacher_lr,
        )
        log(
            INFO,
            "\t├── Student: %s, loss %s (%s), %s epochs, lr %s",
            self.config.model,
            ce.loss,
            ce.manifold,
            ce.distill_epochs,
            ce.distill_lr,
        )
        log(
            INFO,
            "\t├── Selection: lowest val ECE (%s bins) within %s of the best val acc",
            ce.ece_bins,
            ce.select_tolerance,
        )
        log(INFO, "\t└── Offloading thresholds: %s", ", ".join(f"{s:g}" for s in ce.sigmas))

    # ------------------------------------------------------------------ the cloud's training
    def _core_split(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        core = core_data(self.config)
        if len(core) < 2:
            raise ValueError(
                f"cloud-edge needs a labelled core split of >= 2 images (core-fraction > 0), "
                f"got {len(core)}"
            )
        rng = np.random.default_rng(derive_seed("ce-val", self.config.seed))
        order = torch.as_tensor(rng.permutation(len(core)))
        n_val = min(len(core) - 1, max(1, round(self.ce.val_fraction * len(core))))
        val, train = order[:n_val], order[n_val:]
        return (core.x[train], core.y[train]), (core.x[val], core.y[val])

    def _train_teacher(self, train: tuple[torch.Tensor, torch.Tensor]) -> torch.nn.Module:
        seed = derive_seed("ce-teacher", self.config.seed)
        teacher = build_experiment_model(self.config, seed=seed, name=self.ce.teacher_model)
        description = {
            "config": run_description(self.config, exclude=("strategy", "model")),
            "teacher-model": self.ce.teacher_model,
            "epochs": self.ce.teacher_epochs,
            "lr": self.ce.teacher_lr,
            "val-fraction": self.ce.val_fraction,
            "seed": seed,
            "initial": state_digest(teacher.state_dict()),
        }

        def train_teacher() -> dict[str, Any]:
            train_supervised(
                teacher,
                *train,
                epochs=self.ce.teacher_epochs,
                batch_size=self.config.batch_size,
                lr=self.ce.teacher_lr,
                momentum=self.config.momentum,
                weight_decay=self.config.weight_decay,
                seed=seed,
                **self._augment,
                lr_schedule="cosine",
            )
            return {"state": teacher.state_dict()}

        cache = TrainingCache(self.config.cache_dir)
        stored = cache.get_or_compute("cloud-edge-teacher", description, train_teacher)
        teacher.load_state_dict(stored["state"])
        return teacher.eval()

    def _test_figures(self, model: torch.nn.Module) -> dict[str, float]:
        probs = torch.softmax(predict_logits(model, self.test.x), dim=1)
        accuracy = float((probs.argmax(1) == self.test.y).float().mean())
        return {
            "acc": accuracy,
            "ece": expected_calibration_error(probs, self.test.y, self.ce.ece_bins),
        }

    def prepare(self) -> DistillOutcome:
        """Train the teacher (cached) and distil the student with ECE checkpoint selection."""
        train, val = self._core_split()
        self.teacher = self._train_teacher(train)
        seed = derive_seed("ce-distill", self.config.seed)
        outcome = distil_student(
            self.student,
            self.teacher,
            train,
            val,
            loss=self.ce.student_loss(),
            epochs=self.ce.distill_epochs,
            batch_size=self.config.batch_size,
            lr=self.ce.distill_lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            seed=seed,
            augment=self._augment,
            ece_bins=self.ce.ece_bins,
            tolerance=self.ce.select_tolerance,
        )
        selected = self._test_figures(self.student)
        last_model = build_experiment_model(self.config)
        last_model.load_state_dict(outcome.last_state)
        last = self._test_figures(last_model)
        self.cloud = {
            "teacher-test": self._test_figures(self.teacher),
            "student-test-selected": selected,
            "student-test-last": last,
            "selected-epoch": outcome.selected_epoch["epoch"],
            "seconds-per-epoch": outcome.seconds_per_epoch,
            "history": outcome.history,
            "core-train": len(train[1]),
            "core-val": len(val[1]),
        }
        log(
            INFO,
            "%s: teacher test acc %.4f; student (epoch %s) test acc %.4f, ECE %.4f",
            self.strategy_name,
            self.cloud["teacher-test"]["acc"],
            self.cloud["selected-epoch"],
            selected["acc"],
            selected["ece"],
        )
        return outcome

    # ------------------------------------------------------------------ offloading exchanges
    def _teacher_predict(self, images: np.ndarray) -> np.ndarray:
        bundle = load_bundle(self.config)
        labels = np.zeros(len(images), dtype=np.int64)
        x, _ = to_tensors(images, labels, bundle.mean, bundle.std, normalize=self.config.normalize)
        assert self.teacher is not None
        return predict_logits(self.teacher, x).argmax(1).numpy()

    def _offload_round(
        self, grid: Grid, server_round: int, sigma: float, arrays: ArrayRecord
    ) -> dict[str, dict[str, Any]]:
        content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({SIGMA: sigma})})
        messages = self.nodes.messages(content, OFFLOAD_TYPE, str(server_round))
        edges: dict[str, dict[str, Any]] = {}
        answers: list[Message] = []
        for reply in grid.send_and_receive(messages, timeout=self.ce.round_timeout):
            label = str(self.nodes.label(reply.metadata.src_node_id))
            reason = error_reason(reply)
            if reason is None:
                try:
                    images, indices = read_offload(reply.content[OFFLOAD_RECORD])
                    metrics = reply_metrics(reply)
                    if int(metrics[OFFLOADED]) != len(indices):
                        raise ValueError(
                            f"{OFFLOADED}={metrics[OFFLOADED]} but {len(indices)} sent"
                        )
                    if int(metrics[OFFLOAD_BYTES]) != images.nbytes:
                        raise ValueError(f"{OFFLOAD_BYTES}={metrics[OFFLOAD_BYTES]} != payload")
                except (KeyError, ValueError) as err:
                    reason = f"bad offload reply: {err}"
            if reason is not None:
                edges[label] = {"status": reason}
                continue
            edges[label] = {
                "status": "ok",
                "num-examples": int(metrics[NUM_EXAMPLES]),
                "offloaded": len(indices),
                "offload-bytes": int(images.nbytes),
                "uplink-bytes": content_bytes(reply),
                "edge-correct": int(metrics[EDGE_CORRECT]),
                "edge-correct-kept": int(metrics[EDGE_CORRECT_KEPT]),
                "cloud-correct": 0,
            }
            if len(indices):
                answer = RecordDict(
                    {
                        ANSWER_RECORD: answer_record(indices, self._teacher_predict(images)),
                        CONFIG: ConfigRecord({SIGMA: sigma}),
                    }
                )
                node = reply.metadata.src_node_id
                answers.append(instruction(answer, ANSWER_TYPE, node, str(server_round)))
                edges[label]["status"] = "no answer reply"
        for node in self.nodes.edges:
            label = str(self.nodes.label(node))
            edges.setdefault(label, {"status": f"no reply within {self.ce.round_timeout:g} s"})
        for reply in grid.send_and_receive(answers, timeout=self.ce.round_timeout):
            edge = edges[str(self.nodes.label(reply.metadata.src_node_id))]
            reason = error_reason(reply)
            metrics = reply_metrics(reply)
            if reason is None and int(metrics.get(ANSWERED, -1)) == edge["offloaded"]:
                edge["cloud-correct"] = int(metrics[CLOUD_CORRECT])
                edge["status"] = "ok"
            else:
                edge["status"] = reason or f"answered {metrics.get(ANSWERED)!r} samples"
        return edges

    def _sweep_row(self, sigma: float, edges: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        ok = [e for e in edges.values() if e["status"] == "ok"]
        n = sum(e["num-examples"] for e in ok)
        if n == 0:
            return {"sigma": sigma, "edges-ok": 0}
        offloaded = sum(e["offloaded"] for e in ok)
        cloud_correct = sum(e["cloud-correct"] for e in ok)
        system = (sum(e["edge-correct-kept"] for e in ok) + cloud_correct) / n
        if sigma == 1.0:
            self.cloud_acc = system
        return {
            "sigma": sigma,
            "edges-ok": len(ok),
            "num-examples": n,
            "offloaded": offloaded,
            "offload-rate": offloaded / n,
            "offload-bytes": sum(e["offload-bytes"] for e in ok),
            "uplink-bytes": sum(e["uplink-bytes"] for e in ok),
            "edge-acc": sum(e["edge-correct"] for e in ok) / n,
            "cloud-acc": self.cloud_acc,
            "system-acc": system,
            "cloud-acc-offloaded": cloud_correct / offloaded if offloaded else None,
        }

    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Train teacher and student, then one offloading exchange per ``sigma``.

        ``initial_arrays`` and ``num_rounds`` are ignored (the student is built here; one
        round per threshold). ``evaluate_fn`` is called after each round with the student.
        """
        log(INFO, "%s: settings", self.strategy_name)
        self.summary()
        self.nodes.request(grid)
        self.prepare()
        self.nodes.map(grid, timeout=self.ce.round_timeout)
        arrays = ArrayRecord(self.student.state_dict())
        result = Result(arrays=arrays)
        evaluate_fn = options.get("evaluate_fn")
        for server_round, sigma in enumerate(sweep_order(self.ce.sigmas), start=1):
            edges = self._offload_round(grid, server_round, sigma, arrays)
            row = self._sweep_row(sigma, edges)
            self.sweep.append({**row, "edges": edges})
            self.report(server_round, {k: v for k, v in row.items() if v is not None})
            log(
                INFO,
                "%s: sigma %g  %s",
                self.strategy_name,
                sigma,
                {k: round(v, 4) for k, v in row.items() if isinstance(v, float)},
            )
            if evaluate_fn is not None:
                metrics = evaluate_fn(server_round, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = metrics
        if not any(row.get("edges-ok") for row in self.sweep):
            raise FederationError(
                f"{self.strategy_name}: no edge completed an offloading exchange "
                f"({len(self.nodes.edges)} edge(s))"
            )
        return result

    def run_files(self) -> Mapping[str, Any]:
        """``cloud_edge.json``: the cloud's training figures and the sweep, per edge."""
        return {"cloud_edge.json": {"cloud": self.cloud, "sweep": self.sweep}}


@register_strategy("cloud-edge", sections={"ce-": CloudEdgeConfig})
def build_cloud_edge(context: StrategyContext) -> CloudEdge:
    """Factory for ``strategy = "cloud-edge"`` (keys ``ce-*``)."""
    return CloudEdge(context.config, CloudEdgeConfig.from_run_config(context.run_config))
