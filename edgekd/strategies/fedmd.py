"""FedMD with latent-space distillation: heterogeneous client models, public alignment data.

Papers: Li and Wang, "FedMD: Heterogenous Federated Learning via Model Distillation", NeurIPS
2019 FL workshop, https://arxiv.org/abs/1910.03581; the latent extension follows the "Latent
Space Distillation" slides (KIT): a linear representation layer of size r before every client's
output layer lets heterogeneous perception modules share one latent space, and the clients
also distil that representation (MSE), which raised accuracy under non-IID data.

Each client keeps a model of its own architecture (``fedmd-client-models``, round-robin by
partition id), pre-trained by transfer learning on the public data and then on its private
data. Every round the server draws a seeded alignment subset of the public data; the clients
return class scores (and representations) on it; the server forms the consensus (mean,
optionally weighted by private-data size) and sends it back; the clients *digest* it (KL at a
temperature or MSE on the logits, plus MSE on the representation for LKD) and *revisit* their
private data. Weights never leave the clients. Methods (``fedmd-method``):

* ``CE``: no collaboration, every client only revisits its private data each round;
* ``KD``: FedMD, consensus of the logits only;
* ``LKD``: logits and representations (latent distillation);
* ``FedAvg``: reference where the architectures allow it (one model name for every client):
  every client starts round 1 from the same global model (the shared initialisation after the
  same public stage of transfer learning, no private pre-training), trains it for
  ``fedmd-revisit-epochs`` on its private data, and the weights are averaged each round. Only
  this baseline sends weights.

The message format (three custom actions, public data as row indices, the consensus) and
the setup rules both sides share (public pool, private partitions) are in
:mod:`edgekd.protocol.fedmd`. A scores reply with an error, a wrong shape or NaN/inf values is
left out of the consensus with a logged reason; the round goes on with the others.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.config import ExperimentConfig
from edgekd.experiment import experiment_split, load_bundle
from edgekd.models import build_model, count_parameters
from edgekd.protocol import ARRAYS, CONFIG, METRICS
from edgekd.protocol.fedmd import (
    CONSENSUS,
    MSG_EVALUATE,
    MSG_SCORES,
    MSG_TRAIN,
    PUBLIC,
    SCORES,
    WITH_REPRESENTATIONS,
    DigestSettings,
    FedMDSetup,
    public_pool,
    public_pool_size,
)
from edgekd.strategies.common import (
    FederationError,
    NodeMapper,
    RoundReports,
    content_bytes,
    error_reason,
)
from edgekd.strategies.fedmd_config import LOGIT_LOSSES, METHODS, WEIGHTINGS, FedMDConfig
from edgekd.strategies.fedmd_consensus import (
    ClientScores,
    check_scores,
    consensus,
    consensus_diagnostics,
)
from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = [
    "CONSENSUS",
    "LOGIT_LOSSES",
    "METHODS",
    "MSG_EVALUATE",
    "MSG_SCORES",
    "MSG_TRAIN",
    "PUBLIC",
    "SCORES",
    "WEIGHTINGS",
    "ClientScores",
    "FedMD",
    "FedMDConfig",
    "check_scores",
    "consensus",
    "content_bytes",
]


def _shared_fields(source: FedMDConfig, target: type, skip: str = "") -> dict[str, Any]:
    """The values of ``source``'s fields that dataclass ``target`` has under the same name."""
    names = {f.name for f in fields(target)} - {skip}
    return {f.name: getattr(source, f.name) for f in fields(source) if f.name in names}


def _average_arrays(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """Weighted mean of floating-point arrays; integer arrays (counters) from the first."""
    total = float(sum(weights))
    averaged: dict[str, Array] = {}
    for key in records[0]:
        arrays = [r[key].numpy() for r in records]
        if np.issubdtype(arrays[0].dtype, np.floating):
            mean = sum(w * a.astype(np.float64) for w, a in zip(weights, arrays, strict=True))
            averaged[key] = Array(np.asarray(mean / total, dtype=arrays[0].dtype))
        else:
            averaged[key] = Array(arrays[0])
    return ArrayRecord(averaged)


class FedMD(RoundReports, Strategy):
    """FedMD / latent FedMD over heterogeneous client models (no global model).

    Parameters
    ----------
    config : ExperimentConfig
        Shared run config: data set, Dirichlet/IID partitions (``num-partitions``), the
        clients' schedule (``batch-size``, ``lr``, ``lr-schedule``, ``momentum``,
        ``weight-decay``, ``augment``) and ``seed``.
    fedmd : FedMDConfig
        The ``fedmd-*`` settings.

    Notes
    -----
    Per round, :meth:`round_report` holds ``uniform-acc-mean``/``-std``,
    ``private-acc-mean``/``-std``, per-client lists in partition order,
    ``bytes-sent``/``bytes-received``, ``num-in-consensus`` and ``left-out`` (partition ->
    reason); :meth:`run_files` gives ``fedmd-setup.json``.
    The clients must implement the three actions of the module docstring (edgekd's ClientApp
    does, see :mod:`edgekd.clients.fedmd`) and ``query.whoami``. A node that does not answer
    round 0's ``evaluate.fedmd`` (an error reply: e.g. a plain Flower ClientApp without
    FedMD's handlers) is left out of the run with a logged reason (``left-out-nodes`` in
    round 0's report); fewer than two FedMD clients raise
    :class:`edgekd.strategies.common.FederationError` naming how many answered. Round 0 is
    the evaluation after the clients' transfer learning. The ServerApp's central evaluation
    is skipped: there is no global model (except for the FedAvg baseline, whose global model
    the clients evaluate).
    """

    accuracy_keys = ("uniform-acc-mean", "private-acc-mean")
    central_evaluation = False

    def __init__(self, config: ExperimentConfig, fedmd: FedMDConfig) -> None:
        self.config = config
        self.fedmd = fedmd
        bundle = load_bundle(config)
        self.num_classes = bundle.num_classes
        self.pool_size = public_pool_size(config, fedmd.public_source, fedmd.public_fraction)
        if fedmd.alignment_size > self.pool_size:
            raise ValueError(
                f"fedmd-alignment-size ({fedmd.alignment_size}) exceeds the public pool "
                f"({self.pool_size} images from {fedmd.public_source!r})"
            )
        split = experiment_split(fedmd.private_config(config))
        self.partition_sizes = [len(p) for p in split.partitions]
        self.histograms = split.histograms(bundle.y_train, bundle.num_classes)
        self.model_parameters: dict[int, int] = {}
        self.model_bytes: dict[int, int] = {}
        for pid in range(config.num_partitions):
            model = build_model(
                fedmd.model_name(pid),
                bundle.num_classes,
                bundle.in_channels,
                representation_dim=fedmd.representation_dim,
            )
            self.model_parameters[pid] = count_parameters(model)
            self.model_bytes[pid] = ArrayRecord(model.state_dict()).count_bytes()
        self.nodes = NodeMapper(config.num_partitions, "fedmd")
        self.global_arrays: ArrayRecord | None = None
        self._consensus: ArrayRecord | None = None
        self._diagnostics: dict[str, float] = {}
        self._public_labels = None
        if fedmd.public_source == "split":  # public images labelled in the private label space
            pool = public_pool(config, fedmd.public_source, fedmd.public_fraction)
            self._public_labels = pool.data.y.numpy()
        self._bytes = {"sent": 0, "received": 0}

    # ------------------------------------------------------------------ helpers
    def summary(self) -> None:
        """Log the configuration."""
        fm = self.fedmd
        log(
            INFO,
            "\t├── FedMD method %s, r=%s, models %s",
            fm.method,
            fm.representation_dim,
            fm.models,
        )
        log(
            INFO,
            "\t├── Public %s (%s images), alignment %s per round, weighting %s",
            fm.public_source,
            self.pool_size,
            fm.alignment_size,
            fm.consensus_weighting,
        )
        log(
            INFO,
            "\t└── Digest %s epoch(s) lr %s (%s, t=%s, latent weight %s); revisit %s epoch(s)",
            fm.digest_epochs,
            fm.digest_lr,
            fm.logit_loss,
            fm.temperature,
            fm.latent_weight if fm.method == "LKD" else 0,
            fm.revisit_epochs,
        )

    def setup_record(self) -> dict[str, Any]:
        """What ``fedmd-setup.json`` holds: models, sizes and class histograms per client."""
        return {
            "method": self.fedmd.method,
            "fedmd": {f.name: getattr(self.fedmd, f.name) for f in fields(self.fedmd)},
            "public_pool_size": self.pool_size,
            "clients": [
                {
                    "partition_id": pid,
                    "model": self.fedmd.model_name(pid),
                    "num_parameters": self.model_parameters[pid],
                    "model_bytes": self.model_bytes[pid],
                    "num_examples": self.partition_sizes[pid],
                    "histogram": self.histograms[pid].tolist(),
                }
                for pid in range(self.config.num_partitions)
            ],
        }

    @property
    def node_of_partition(self) -> dict[int, int]:
        """Partition id -> node id of the clients mapped so far."""
        return self.nodes.node_of_partition

    def run_files(self) -> Mapping[str, Any]:
        """``fedmd-setup.json``: the clients' models, sizes and class histograms."""
        return {"fedmd-setup.json": self.setup_record()}

    def message_config(self, server_round: int, **extra: Any) -> ConfigRecord:
        """The setup keys every FedMD message carries, plus ``extra``."""
        fm = self.fedmd
        setup = FedMDSetup(
            server_round=server_round,
            client_models=fm.models,
            seed=self.config.seed,
            shared_init=fm.method == "FedAvg",
            **_shared_fields(fm, FedMDSetup, skip="client_models"),
        )
        return setup.to_config(**extra)

    def _messages(
        self, grid: Grid, server_round: int, message_type: str, content: RecordDict
    ) -> list[Message]:
        return self.nodes.messages(content, message_type, str(server_round))

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
        """send_and_receive, counting the payload bytes of both directions."""
        self._bytes["sent"] += sum(content_bytes(m) for m in messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        self._bytes["received"] += sum(content_bytes(r) for r in replies)
        return replies

    def _by_partition(self, replies: Iterable[Message]) -> list[Message]:
        """``replies`` in partition (edge) order: replies arrive in any order, and the
        consensus and the means over clients must not depend on it (float sums are not
        associative)."""
        return sorted(replies, key=self.nodes.position)

    def _label(self, reply: Message) -> int | str:
        return self.nodes.label(reply.metadata.src_node_id)

    def _failed(self, what: str, server_round: int, reply: Message) -> str | None:
        """Log and return the reason when ``reply`` is an error, else None."""
        reason = error_reason(reply)
        if reason is not None:
            log(
                WARNING,
                "fedmd: round %s: %s of partition %s failed: %s",
                server_round,
                what,
                self._label(reply),
                reason,
            )
        return reason

    def admit_clients(self, replies: Iterable[Message]) -> dict[int | str, str]:
        """Keep as clients the nodes that answered round 0's ``evaluate.fedmd``.

        The others are left out of the run (logged); returns their reasons by partition.
        Raises :class:`FederationError` when fewer than two clients remain.
        """
        reasons = {r.metadata.src_node_id: error_reason(r) for r in replies}
        total = len(self.nodes.edges)
        left_out: dict[int | str, str] = {}
        for node in self.nodes.edges:
            reason = reasons.get(node, "no reply before the timeout") or ""
            if reason:
                left_out[self.nodes.label(node)] = reason
                self.nodes.exclude(node, reason)
                log(
                    WARNING,
                    "fedmd: partition %s left out: it does not answer FedMD's %s: %s",
                    self.nodes.label(node),
                    MSG_EVALUATE,
                    reason,
                )
        clients = len(self.nodes.edges)
        if clients < 2:
            first = next(iter(left_out.values()), "")
            raise FederationError(
                f"fedmd: {clients} of {total} node(s) answered FedMD's messages; FedMD needs "
                f"at least 2 clients" + (f" (first reason: {first})" if first else "")
            )
        return left_out

    # ------------------------------------------------------------------ alignment / consensus
    def alignment_indices(self, server_round: int) -> np.ndarray:
        """This round's alignment subset: sorted public indices, seeded by seed and round."""
        rng = np.random.default_rng([self.config.seed, server_round, 0xFED])
        chosen = rng.choice(self.pool_size, size=self.fedmd.alignment_size, replace=False)
        return np.sort(chosen).astype(np.int64)

    def configure_query(self, server_round: int, grid: Grid) -> list[Message]:
        """``query.fedmd_scores`` to every client, with this round's alignment indices."""
        indices = self.alignment_indices(server_round)
        content = RecordDict(
            {
                PUBLIC: ArrayRecord({"indices": Array(indices)}),
                CONFIG: self.message_config(
                    server_round, **{WITH_REPRESENTATIONS: self.fedmd.method == "LKD"}
                ),
            }
        )
        return self._messages(grid, server_round, MSG_SCORES, content)

    def aggregate_query(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, dict[int | str, str]]:
        """Validate the scores, leave bad clients out and form the consensus.

        Returns the consensus record (None when no client is left) and the reasons of the
        clients left out, by partition id.
        """
        indices = self.alignment_indices(server_round)
        r_dim = self.fedmd.representation_dim if self.fedmd.method == "LKD" else None
        accepted: list[ClientScores] = []
        left_out: dict[int | str, str] = {}
        answered: set[int] = set()
        for reply in self._by_partition(replies):
            pid = self.nodes.partition_of(reply)
            answered.add(reply.metadata.src_node_id)
            try:
                accepted.append(check_scores(reply, pid, len(indices), self.num_classes, r_dim))
            except ValueError as err:
                left_out[self._label(reply)] = str(err)
                log(
                    WARNING,
                    "fedmd: round %s: partition %s left out of the consensus: %s",
                    server_round,
                    pid,
                    err,
                )
        for node in self.nodes.edges:
            if node not in answered:
                left_out[self.nodes.label(node)] = "no reply before the timeout"
                log(
                    WARNING,
                    "fedmd: round %s: partition %s did not reply",
                    server_round,
                    self.nodes.label(node),
                )
        if not accepted:
            log(WARNING, "fedmd: round %s: no valid scores, no consensus this round", server_round)
            return None, left_out
        weights = None
        if self.fedmd.consensus_weighting == "num-examples":
            weights = [float(s.num_examples) for s in accepted]
            if sum(weights) <= 0:
                weights = None
        logits = consensus([s.logits for s in accepted], weights)
        labels = None if self._public_labels is None else self._public_labels[indices]
        self._diagnostics = consensus_diagnostics(accepted, logits, labels)
        arrays = {"indices": Array(indices), "logits": Array(logits)}
        if r_dim is not None:
            reps = [s.representations for s in accepted if s.representations is not None]
            arrays["representations"] = Array(consensus(reps, weights))
        return ArrayRecord(arrays), left_out

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``train.fedmd`` to every client: the consensus (if any) to digest, then revisit."""
        fm = self.fedmd
        digest = DigestSettings(**_shared_fields(fm, DigestSettings))
        if fm.method != "LKD":
            digest = replace(digest, latent_weight=0.0)
        train_config = self.message_config(server_round, **digest.to_config())
        content = RecordDict({CONFIG: train_config})
        if self._consensus is not None:
            content[CONSENSUS] = self._consensus
        if fm.method == "FedAvg" and len(arrays) > 0:
            content[ARRAYS] = arrays
        return self._messages(grid, server_round, MSG_TRAIN, content)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Mean digest/revisit losses; for FedAvg also the weighted mean of the weights."""
        ok: list[Message] = []
        failures: dict[int | str, str] = {}
        for reply in self._by_partition(replies):
            reason = self._failed("train", server_round, reply)
            if reason is None:
                ok.append(reply)
            else:
                failures[self._label(reply)] = reason
        metrics: dict[str, Any] = {"num-trained": len(ok)}
        if failures:
            metrics["train-failures"] = failures
        for key in ("digest-loss", "revisit-loss"):
            values = [float(r.content[METRICS][key]) for r in ok]
            finite = [v for v in values if np.isfinite(v)]
            if finite:
                metrics[f"{key}-mean"] = float(np.mean(finite))
        arrays = None
        if self.fedmd.method == "FedAvg":
            with_arrays = [r for r in ok if ARRAYS in r.content.array_records]
            if with_arrays:
                weights = [float(r.content[METRICS]["num-examples"]) for r in with_arrays]
                arrays = _average_arrays([r.content[ARRAYS] for r in with_arrays], weights)
        self.report(server_round, metrics)
        return arrays, MetricRecord(
            {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``evaluate.fedmd`` to every client (FedAvg: with the global model)."""
        content = RecordDict({CONFIG: self.message_config(server_round)})
        if self.fedmd.method == "FedAvg" and len(arrays) > 0:
            content[ARRAYS] = arrays
        return self._messages(grid, server_round, MSG_EVALUATE, content)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Mean and spread over clients of the uniform and private test accuracies."""
        per_client: dict[int | str, Mapping[str, Any]] = {}
        failures: dict[int | str, str] = {}
        for reply in self._by_partition(replies):
            reason = self._failed("evaluate", server_round, reply)
            if reason is None:
                per_client[self._label(reply)] = reply.content[METRICS]
            else:
                failures[self._label(reply)] = reason
        metrics: dict[str, Any] = {"num-evaluated": len(per_client)}
        if failures:
            metrics["evaluate-failures"] = failures
        if per_client:
            order = list(per_client)  # edge order
            metrics["partitions"] = order
            for key in ("uniform-acc", "private-acc"):
                values = np.array([float(per_client[p][key]) for p in order])
                metrics[f"{key}-mean"] = float(values.mean())
                metrics[f"{key}-std"] = float(values.std())
                metrics[f"{key}-min"] = float(values.min())
                metrics[f"{key}-max"] = float(values.max())
                metrics[key] = values.tolist()
                by_model: dict[str, list[float]] = {}
                for pid, value in zip(order, values, strict=True):
                    model = self.fedmd.model_name(pid) if isinstance(pid, int) else "unknown"
                    by_model.setdefault(model, []).append(float(value))
                metrics[f"{key}-by-model"] = {m: float(np.mean(v)) for m, v in by_model.items()}
        self.report(server_round, metrics)
        if not per_client:
            return None
        return MetricRecord({k: v for k, v in metrics.items() if isinstance(v, int | float)})

    # ------------------------------------------------------------------ round loop
    def _evaluate_round(self, server_round: int, grid: Grid, timeout: float) -> MetricRecord | None:
        arrays = self.global_arrays if self.global_arrays is not None else ArrayRecord()
        messages = list(self.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        replies = self._exchange(grid, messages, timeout)
        if server_round == 0:
            self.report(0, {"left-out-nodes": self.admit_clients(replies)})
        return self.aggregate_evaluate(server_round, replies)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Transfer learning (round 0), then per round: scores, consensus, digest, revisit.

        ``initial_arrays`` is ignored: the clients own their models, and their schedules come
        from the run config. Of Flower's other ``start`` arguments (``options``, by keyword)
        ``num_rounds``, ``timeout`` (per exchange) and ``evaluate_fn`` are used; the latter is
        called at the end of every round (round 0 included) with the global arrays (empty but
        for the FedAvg baseline): the server's per-round hook (there is no central
        evaluation, see ``central_evaluation``).
        """
        num_rounds, timeout = options.get("num_rounds", 3), options.get("timeout", 3600)
        evaluate_fn = options.get("evaluate_fn")
        started = time.monotonic()
        log(INFO, "fedmd: starting %s rounds of %s", num_rounds, self.fedmd.method)
        self.summary()
        self.nodes.map(grid, timeout)
        result = Result()
        for server_round in range(num_rounds + 1):
            self._bytes = {"sent": 0, "received": 0}
            round_metrics: dict[str, Any] = {}
            if server_round > 0:
                round_metrics = self._train_round(server_round, grid, timeout, result)
            evaluation = self._evaluate_round(server_round, grid, timeout)
            if evaluation is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluation
            elapsed = time.monotonic() - started
            round_metrics.update(
                {
                    "bytes-sent": self._bytes["sent"],
                    "bytes-received": self._bytes["received"],
                    "elapsed-s": elapsed,
                }
            )
            self.report(server_round, round_metrics)
            self._log_round(server_round, num_rounds, evaluation, elapsed)
            if evaluate_fn is not None:
                arrays = self.global_arrays if self.global_arrays is not None else ArrayRecord()
                evaluate_fn(server_round, arrays)
        return result

    def _train_round(
        self, server_round: int, grid: Grid, timeout: float, result: Result
    ) -> dict[str, Any]:
        """Scores and consensus (KD, LKD), then digest and revisit; the round's metrics."""
        round_metrics: dict[str, Any] = {}
        self._consensus = None
        if self.fedmd.shares_scores:
            replies = self._exchange(grid, self.configure_query(server_round, grid), timeout)
            self._consensus, left_out = self.aggregate_query(server_round, replies)
            round_metrics["left-out"] = left_out
            round_metrics["num-in-consensus"] = len(self.nodes.edges) - len(left_out)
            round_metrics.update(self._diagnostics)
        arrays = self.global_arrays if self.global_arrays is not None else ArrayRecord()
        messages = list(self.configure_train(server_round, arrays, ConfigRecord(), grid))
        new_arrays, train_metrics = self.aggregate_train(
            server_round, self._exchange(grid, messages, timeout)
        )
        if new_arrays is not None:
            self.global_arrays = new_arrays
            result.arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        return round_metrics

    def _log_round(
        self, server_round: int, num_rounds: int, evaluation: MetricRecord | None, elapsed: float
    ) -> None:
        row = evaluation if evaluation is not None else MetricRecord()
        log(
            INFO,
            "fedmd: round %s/%s  uniform-acc %.4f ± %.4f  private-acc %.4f ± %.4f  "
            "bytes sent %s received %s  (%.1fs)",
            server_round,
            num_rounds,
            row.get("uniform-acc-mean", float("nan")),
            row.get("uniform-acc-std", float("nan")),
            row.get("private-acc-mean", float("nan")),
            row.get("private-acc-std", float("nan")),
            self._bytes["sent"],
            self._bytes["received"],
            elapsed,
        )


@register_strategy("fedmd", sections={"fedmd-": FedMDConfig})
def build_fedmd(context: StrategyContext) -> FedMD:
    """Factory for ``strategy = "fedmd"`` (keys ``fedmd-*``)."""
    return FedMD(
        context.config,
        FedMDConfig.from_run_config(context.run_config),
    )
