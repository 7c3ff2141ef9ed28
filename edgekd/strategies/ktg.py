"""Federated knowledge transfer graph: every graph node is a client with its own model.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL. The central version
(every node on the same batch) is :func:`edgekd.ktg.train_graph`; here node ``i`` of the gate
matrix (``ktg-gates``, grammar of :class:`edgekd.losses.ktg.GateMatrix`: row = target,
column = source, diagonal = the self/CE edge) is the client of partition ``i``, with its own
architecture (``ktg-models``) and its private (e.g. Dirichlet) shard. Weights never leave the
clients.

Per round: the server draws a seeded public batch (``ktg-public-size`` rows of the public pool,
:mod:`edgekd.protocol.public`), asks the nodes that teach someone for their logits on it,
applies the graph (:func:`edgekd.strategies.ktg_targets.graph_targets`: the gates' per-sample
weights, the Linear gate counted in rounds) and sends each learning node its gated targets;
the nodes train ``local-epochs`` on self-CE (private data) plus their incoming edges (public
batch) and every node is evaluated on the test split. Special graphs:

* all off-diagonal gates Cutoff (``"T,X,X;X,T,X;X,X,T"``): no logits travel, every node trains
  exactly as independent local training (bit for bit, same seed and schedule);
* all gates Through: federated deep mutual learning;
* all Through with ``ktg-aggregate = "mean-logits"``: every node distils towards the mean of
  the others' logits, FedMD's consensus (:func:`edgekd.strategies.fedmd.consensus`) of the other
  nodes. FedMD itself also averages in the node's own logits, which a graph does not: a node
  is not its own source (its self edge is the cross-entropy).

The message format is in :mod:`edgekd.protocol.ktg`. A logits reply with an error, a wrong
shape or NaN/inf values is left out for that round (its outgoing edges dropped, the reason
logged and reported as ``left-out``); the run goes on. A gate matrix whose size is not
``num-partitions``, or not the number of clients that joined, is a
:class:`edgekd.losses.ktg.GateMatrixError`; a run in which no client trained in any round
raises :class:`edgekd.strategies.common.FederationError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from edgekd.config import ExperimentConfig
from edgekd.experiment import load_bundle
from edgekd.losses.ktg import GateMatrixError
from edgekd.models import build_model, count_parameters
from edgekd.protocol import CONFIG, METRICS
from edgekd.protocol.ktg import (
    MSG_EVALUATE,
    MSG_LOGITS,
    MSG_TRAIN,
    PUBLIC,
    TARGETS,
    KTGSetup,
    TrainSettings,
)
from edgekd.protocol.public import public_pool, public_pool_size
from edgekd.strategies.common import (
    FederationError,
    NodeMapper,
    RoundReports,
    content_bytes,
    error_reason,
    instruction,
)
from edgekd.strategies.ktg_config import AGGREGATES, KTGConfig
from edgekd.strategies.ktg_targets import (
    NodeTargets,
    check_logits_reply,
    graph_targets,
    self_weight,
    teachers,
)
from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = ["AGGREGATES", "KTG", "KTGConfig", "NodeTargets", "graph_targets"]


class KTG(RoundReports, Strategy):
    """A knowledge transfer graph over federated clients (no global model).

    Parameters
    ----------
    config : ExperimentConfig
        Shared run config: data set, partitions (``num-partitions`` = the graph's nodes), the
        clients' local schedule (``local-epochs``, ``batch-size``, ``lr``, ``lr-schedule``,
        ``momentum``, ``weight-decay``, ``augment``) and ``seed``.
    ktg : KTGConfig
        The ``ktg-*`` settings.

    Notes
    -----
    Per round, :meth:`round_report` holds ``node-acc`` (each node's test accuracy, node
    order), ``node-0-acc`` (the DCL target), ``test-acc-mean``/``-max``, ``train-loss``
    (per node, NaN for one that did not train), ``num-trained``, ``num-teachers``,
    ``left-out`` (partition -> reason), ``bytes-sent``/``bytes-received``;
    :meth:`run_files` gives ``ktg-setup.json``. The clients must implement the three actions
    of :mod:`edgekd.protocol.ktg` (edgekd's ClientApp does, :mod:`edgekd.clients.ktg`) and
    ``query.whoami`` (node ``i`` = the client reporting partition ``i``).
    """

    accuracy_keys = ("node-0-acc", "test-acc-mean")
    central_evaluation = False

    def __init__(self, config: ExperimentConfig, ktg: KTGConfig) -> None:
        self.config = config
        self.ktg = ktg
        self.gates = ktg.matrix(config.num_partitions)
        bundle = load_bundle(config)
        self.num_classes = bundle.num_classes
        self.pool_size = public_pool_size(config, ktg.public_source, ktg.public_fraction)
        if ktg.public_size > self.pool_size:
            raise ValueError(
                f"ktg-public-size ({ktg.public_size}) exceeds the public pool "
                f"({self.pool_size} images from {ktg.public_source!r})"
            )
        self._labels = None
        if ktg.needs_labels:
            pool = public_pool(config, ktg.public_source, ktg.public_fraction)
            self._labels = pool.data.y.numpy()
        self.model_parameters = [
            count_parameters(build_model(ktg.model_name(n), bundle.num_classes, bundle.in_channels))
            for n in range(self.gates.num_nodes)
        ]
        self.nodes = NodeMapper(config.num_partitions, "ktg")
        self._bytes = {"sent": 0, "received": 0}
        self._trained = 0

    # ------------------------------------------------------------------ helpers
    def run_files(self) -> Mapping[str, Any]:
        """``ktg-setup.json``: the graph, the settings and each node's model."""
        fields = self.ktg.__dataclass_fields__
        return {
            "ktg-setup.json": {
                "gates": str(self.gates),
                "fixed-nodes": list(self.gates.fixed_nodes),
                "ktg": {name: getattr(self.ktg, name) for name in fields},
                "public-pool-size": self.pool_size,
                "nodes": [
                    {"partition_id": n, "model": self.ktg.model_name(n), "num_parameters": p}
                    for n, p in enumerate(self.model_parameters)
                ],
            }
        }

    def setup(self, server_round: int) -> KTGSetup:
        """The setup keys of this round's messages."""
        names = tuple(self.ktg.model_name(n) for n in range(self.gates.num_nodes))
        return KTGSetup(
            server_round=server_round,
            node_models=names,
            seed=self.config.seed,
            public_source=self.ktg.public_source,
            public_fraction=self.ktg.public_fraction,
        )

    def public_indices(self, server_round: int) -> np.ndarray:
        """This round's public batch: sorted pool indices, seeded by seed and round."""
        rng = np.random.default_rng([self.config.seed, server_round, 0x4B7])
        chosen = rng.choice(self.pool_size, size=self.ktg.public_size, replace=False)
        return np.sort(chosen).astype(np.int64)

    def check_clients(self) -> None:
        """Node ``i`` of the graph must be the client of partition ``i``, one per node.

        Raises :class:`GateMatrixError` naming the matrix's size and the clients that joined.
        """
        mapped = sorted(self.nodes.node_of_partition)
        expected = list(range(self.gates.num_nodes))
        if mapped != expected or self.nodes.unmapped:
            raise GateMatrixError(
                f"ktg-gates {str(self.gates)!r} has {self.gates.num_nodes} nodes, but "
                f"{len(self.nodes.edges)} client(s) joined (partition ids {mapped}, "
                f"{len(self.nodes.unmapped)} without one): node i is the client of partition i"
            )

    def _node(self, partition: int) -> int:
        return self.nodes.node_of_partition[partition]

    def _send(self, grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
        """send_and_receive, counting the payload bytes of both directions; partition order."""
        self._bytes["sent"] += sum(content_bytes(m) for m in messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        self._bytes["received"] += sum(content_bytes(r) for r in replies)
        return sorted(replies, key=self.nodes.position)

    def _warn(self, server_round: int, what: str, reply: Message, reason: str) -> None:
        label = self.nodes.label(reply.metadata.src_node_id)
        log(WARNING, "ktg: round %s: %s of partition %s: %s", server_round, what, label, reason)

    # ------------------------------------------------------------------ a round
    def query_logits(
        self, server_round: int, grid: Grid, timeout: float
    ) -> tuple[dict[int, np.ndarray], dict[int | str, str]]:
        """The teachers' logits on this round's public batch, and who was left out (why)."""
        indices = self.public_indices(server_round)
        content = RecordDict(
            {
                PUBLIC: ArrayRecord({"indices": Array(indices)}),
                CONFIG: self.setup(server_round).to_config(),
            }
        )
        asked = teachers(self.gates)
        messages = [
            instruction(content, MSG_LOGITS, self._node(s), str(server_round)) for s in asked
        ]
        replies = self._send(grid, messages, timeout) if messages else []
        return self.accept_logits(server_round, replies, asked, len(indices))

    def accept_logits(
        self, server_round: int, replies: Iterable[Message], asked: Iterable[int], num: int
    ) -> tuple[dict[int, np.ndarray], dict[int | str, str]]:
        """Validate the logits replies: accepted logits by partition, reasons of the others."""
        accepted: dict[int, np.ndarray] = {}
        left_out: dict[int | str, str] = {}
        for reply in replies:
            pid = self.nodes.partition_of(reply)
            try:
                accepted[pid] = check_logits_reply(reply, num, self.num_classes)
            except ValueError as err:
                left_out[self.nodes.label(reply.metadata.src_node_id)] = str(err)
                self._warn(server_round, "logits left out", reply, str(err))
        for pid in asked:
            if pid not in accepted and pid not in left_out:
                left_out[pid] = "no reply before the timeout"
                log(WARNING, "ktg: round %s: partition %s did not reply", server_round, pid)
        return accepted, left_out

    def train_messages(
        self, server_round: int, targets: Mapping[int, NodeTargets], num_rounds: int
    ) -> list[Message]:
        """``train.ktg`` to every learning node, each with its own gated targets."""
        indices = self.public_indices(server_round)
        messages = []
        for node, target in sorted(targets.items()):
            settings = TrainSettings(
                self_weight(self.gates, node, server_round, num_rounds), self.ktg.temperature
            )
            config = self.setup(server_round).to_config(**settings.to_config())
            content = RecordDict({CONFIG: config})
            if target.sources:
                content[TARGETS] = ArrayRecord(
                    {
                        "indices": Array(indices),
                        "logits": Array(np.ascontiguousarray(target.logits)),
                        "weights": Array(np.ascontiguousarray(target.weights)),
                        "sources": Array(np.asarray(target.sources, dtype=np.int64)),
                    }
                )
            messages.append(instruction(content, MSG_TRAIN, self._node(node), str(server_round)))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per-node training losses and failures (no arrays: there is no global model)."""
        replies = list(replies)
        losses = [float("nan")] * self.gates.num_nodes
        failures: dict[int | str, str] = {}
        for reply in replies:
            reason = error_reason(reply)
            if reason is not None:
                failures[self.nodes.label(reply.metadata.src_node_id)] = reason
                self._warn(server_round, "train failed", reply, reason)
                continue
            losses[self.nodes.partition_of(reply)] = float(reply.content[METRICS]["train-loss"])
        trained = sum(1 for r in replies if not r.has_error())
        self._trained += trained
        metrics: dict[str, Any] = {"num-trained": trained, "train-loss": losses}
        if failures:
            metrics["train-failures"] = failures
        self.report(server_round, metrics)
        return None, MetricRecord({"num-trained": trained})

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Each node's test accuracy (node order), node 0's, their mean and maximum."""
        replies = list(replies)
        accs = [float("nan")] * self.gates.num_nodes
        failures: dict[int | str, str] = {}
        for reply in replies:
            reason = error_reason(reply)
            if reason is not None:
                failures[self.nodes.label(reply.metadata.src_node_id)] = reason
                self._warn(server_round, "evaluate failed", reply, reason)
            else:
                accs[self.nodes.partition_of(reply)] = float(reply.content[METRICS]["test-acc"])
        found = [a for a in accs if np.isfinite(a)]
        metrics: dict[str, Any] = {"node-acc": accs, "node-0-acc": accs[0]}
        if found:
            metrics.update({"test-acc-mean": float(np.mean(found)), "test-acc-max": max(found)})
        if failures:
            metrics["evaluate-failures"] = failures
        self.report(server_round, metrics)
        return MetricRecord({k: v for k, v in metrics.items() if isinstance(v, float)})

    def _train_round(self, server_round: int, grid: Grid, timeout: float, num_rounds: int) -> None:
        accepted, left_out = self.query_logits(server_round, grid, timeout)
        targets = graph_targets(
            accepted,
            None if self._labels is None else self._labels[self.public_indices(server_round)],
            self.gates,
            server_round,
            num_rounds,
            self.ktg.aggregate,
        )
        self.report(server_round, {"left-out": left_out, "num-teachers": len(accepted)})
        messages = self.train_messages(server_round, targets, num_rounds)
        self.aggregate_train(server_round, self._send(grid, messages, timeout))

    def _evaluate_round(self, server_round: int, grid: Grid, timeout: float) -> MetricRecord | None:
        content = RecordDict({CONFIG: self.setup(server_round).to_config()})
        messages = self.nodes.messages(content, MSG_EVALUATE, str(server_round))
        return self.aggregate_evaluate(server_round, self._send(grid, messages, timeout))

    # ------------------------------------------------------------------ Strategy API
    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Round 0 evaluates the fresh models; then per round: logits, graph, train, evaluate.

        ``initial_arrays`` is ignored: the clients own their models. Of Flower's other
        ``start`` arguments ``num_rounds``, ``timeout`` (per exchange) and ``evaluate_fn``
        (called at the end of every round, round 0 included, with empty arrays) are used.
        """
        num_rounds, timeout = options.get("num_rounds", 3), options.get("timeout", 3600)
        evaluate_fn = options.get("evaluate_fn")
        started = time.monotonic()
        log(INFO, "ktg: %s rounds, gates %s, models %s", num_rounds, self.gates, self.ktg.models)
        self.summary()
        self.nodes.map(grid, timeout)
        self.check_clients()
        result = Result()
        for server_round in range(num_rounds + 1):
            self._bytes = {"sent": 0, "received": 0}
            if server_round > 0:
                self._train_round(server_round, grid, timeout, num_rounds)
            evaluation = self._evaluate_round(server_round, grid, timeout)
            if evaluation is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluation
            elapsed = time.monotonic() - started
            traffic = {f"bytes-{k}": v for k, v in self._bytes.items()}
            self.report(server_round, {**traffic, "elapsed-s": elapsed})
            row = self.round_report(server_round)
            log(
                INFO,
                "ktg: round %s/%s  node-0-acc %.4f  mean %.4f  (%.1fs)",
                server_round,
                num_rounds,
                row.get("node-0-acc", float("nan")),
                row.get("test-acc-mean", float("nan")),
                elapsed,
            )
            if evaluate_fn is not None:
                evaluate_fn(server_round, ArrayRecord())
        if num_rounds > 0 and self._trained == 0:
            raise FederationError(
                f"ktg: no client trained in any of the {num_rounds} round(s) "
                "(see the train failures of each round)"
            )
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Unused: :meth:`start` runs the rounds (each node gets its own targets,
        :meth:`train_messages`)."""
        return []

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Unused: :meth:`start` runs the rounds."""
        return []

    def summary(self) -> None:
        """Log the configuration."""
        log(
            INFO,
            "\t└── aggregate %s, T=%s, public %s (%s a round of %s)",
            self.ktg.aggregate,
            self.ktg.temperature,
            self.ktg.public_source,
            self.ktg.public_size,
            self.pool_size,
        )


@register_strategy("ktg", sections={"ktg-": KTGConfig})
def build_ktg(context: StrategyContext) -> KTG:
    """Factory for ``strategy = "ktg"`` (keys ``ktg-*``)."""
    return KTG(context.config, KTGConfig.from_run_config(context.run_config))
