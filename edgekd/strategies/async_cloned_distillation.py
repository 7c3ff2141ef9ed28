"""Cloned distillation with true asynchrony: late edges, deadlines and staleness.

Paper: "Asynchronous Edge Learning using Cloned Knowledge Distillation", ICLR 2021 submission,
https://openreview.net/forum?id=MqWHrrIfBMN (Sec. 5.2, lagged edge model, Fig. 7).
Staleness weighting as in FedAsync (Xie et al. 2019, https://arxiv.org/abs/1903.03934).

The server dispatches each round's edge with ``Grid.push_messages`` and waits at most
``async-round-wait`` seconds for it; an edge that has not answered by then is *late* and the
next round starts without it. Every poll pulls all outstanding replies: a late edge's models are
distilled when they arrive (policy ``use``, the paper's case 3) or discarded (``discard``,
case 1), optionally down-weighted by their staleness (rounds between dispatch and use). A reply
outstanding for longer than ``async-edge-deadline`` seconds is abandoned. After the last round,
outstanding replies are waited for up to ``async-final-wait`` seconds (``wait``) or dropped
(``drop``), and reported. Every teacher's staleness is recorded in ``teachers.json``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from edgekd.config import ExperimentConfig, Rules, check_fields, parse_section
from edgekd.protocol import ARRAYS, CONFIG
from edgekd.strategies.cloned_distillation import (
    ClonedDistillation,
    ClonedDistillationConfig,
)
from edgekd.strategies.common import instruction, reply_metrics, scalar_metrics
from edgekd.strategies.registry import StrategyContext, register_strategy

__all__ = ["AsyncClonedDistillation", "AsyncConfig", "staleness_weight"]

LATE_POLICIES = ("use", "discard")
FINAL_POLICIES = ("wait", "drop")
WEIGHTINGS = ("constant", "polynomial")
_RULES = Rules(
    choices={
        "late_policy": LATE_POLICIES,
        "final_policy": FINAL_POLICIES,
        "staleness_weighting": WEIGHTINGS,
    },
    at_least={0: "round_wait edge_deadline final_wait poll_interval staleness_alpha"},
)


def staleness_weight(staleness: int, weighting: str, alpha: float) -> float:
    """FedAsync's staleness function: 1 ("constant") or (1 + staleness)^-alpha."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if weighting == "constant":
        return 1.0
    if weighting == "polynomial":
        return float((1.0 + staleness) ** (-alpha))
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


@dataclass(frozen=True)
class AsyncConfig:
    """The ``async-*`` keys of the run config.

    Attributes
    ----------
    round_wait : float
        Seconds the server waits for the current round's edge before moving on.
    edge_deadline : float
        Seconds after dispatch at which an outstanding reply is abandoned.
    late_policy : {"use", "discard"}
        What to do with a reply that arrives after its round.
    final_policy : {"wait", "drop"}
        What to do with replies still outstanding after the last round.
    final_wait : float
        Seconds to wait for them under ``final_policy = "wait"``.
    staleness_weighting : {"constant", "polynomial"}
        Weight of a late teacher in the distillation loss.
    staleness_alpha : float
        Exponent of the polynomial weighting.
    poll_interval : float
        Seconds between two pulls.
    """

    round_wait: float = 600.0
    edge_deadline: float = 3600.0
    late_policy: str = "use"
    final_policy: str = "wait"
    final_wait: float = 600.0
    staleness_weighting: str = "constant"
    staleness_alpha: float = 0.5
    poll_interval: float = 0.2

    def __post_init__(self) -> None:
        """Validate, naming the bad value."""
        check_fields(self, "async-", _RULES)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> AsyncConfig:
        """Parse the ``async-*`` keys."""
        return parse_section(cls, run_config, "async-")


@dataclass
class _Pending:
    server_round: int
    edge: int
    sent_at: float
    content: RecordDict | None = None  # what was sent: re-sent by a resumed run


class AsyncClonedDistillation(ClonedDistillation):
    """Cloned distillation that never waits for a late edge.

    Parameters
    ----------
    config : ExperimentConfig
        Shared run config.
    cd_config : ClonedDistillationConfig
        Cloned-distillation settings (variant, P, M, schedules, detection).
    async_config : AsyncConfig
        Waiting, deadline, late and final policies, staleness weighting.

    Notes
    -----
    Besides the per-round report, :meth:`run_files` gives ``teachers.json``: one record per
    returned edge (dispatch round, consumed round, staleness, weight, status).
    """

    strategy_name = "async-cloned-distillation"

    def __init__(
        self,
        config: ExperimentConfig,
        cd_config: ClonedDistillationConfig,
        async_config: AsyncConfig,
    ) -> None:
        super().__init__(config, cd_config)
        self.async_config = async_config
        self.pending: dict[str, _Pending] = {}
        self.teacher_log: list[dict[str, Any]] = []
        self._resend: list[dict[str, Any]] = []

    def summary(self) -> None:
        """Log the configuration."""
        super().summary()
        a = self.async_config
        log(
            INFO,
            "\t└── Async: round wait %ss, edge deadline %ss, late %s, final %s (%ss), "
            "staleness %s (alpha %s)",
            a.round_wait,
            a.edge_deadline,
            a.late_policy,
            a.final_policy,
            a.final_wait,
            a.staleness_weighting,
            a.staleness_alpha,
        )

    def _record(self, entry: dict[str, Any]) -> None:
        self.teacher_log.append(entry)

    def run_files(self) -> Mapping[str, Any]:
        """``teachers.json``: what became of every dispatched edge (once there is one)."""
        return {"teachers.json": list(self.teacher_log)} if self.teacher_log else {}

    def checkpoint_state(self) -> dict[str, Any]:
        """Cloned distillation's state, ``teachers.json`` so far, and every outstanding reply
        recorded as *to be re-sent* (its round, edge, arrays and config)."""
        outstanding = [
            {
                "server-round": info.server_round,
                "edge": info.edge,
                "arrays": info.content[ARRAYS].to_torch_state_dict(),
                "config": dict(info.content[CONFIG]),
            }
            for info in self.pending.values()
            if info.content is not None
        ]
        return {
            **super().checkpoint_state(),
            "teacher-log": list(self.teacher_log),
            "to-be-re-sent": outstanding,
        }

    def restore_checkpoint(self, state: dict[str, Any], server_round: int) -> None:
        """Load :meth:`checkpoint_state`; the outstanding work is re-sent when the run starts."""
        super().restore_checkpoint(state, server_round)
        self.teacher_log = list(state["teacher-log"])
        self._resend = list(state["to-be-re-sent"])

    def _resend_outstanding(self, grid: Grid) -> None:
        """Push again what was outstanding at the checkpoint (same round, edge and content)."""
        for entry in self._resend:
            edge, server_round = int(entry["edge"]), int(entry["server-round"])
            if edge not in self.node_of_partition:
                log(WARNING, "async: edge %s has no node; its round %s is lost", edge, server_round)
                continue
            content = RecordDict(
                {ARRAYS: ArrayRecord(entry["arrays"]), CONFIG: ConfigRecord(entry["config"])}
            )
            node = self.node_of_partition[edge]
            message = instruction(content, MessageType.TRAIN, node, str(server_round))
            (message_id,) = grid.push_messages([message])
            self.pending[message_id] = _Pending(server_round, edge, time.monotonic(), content)
            log(INFO, "async: re-sent edge %s's work of round %s", edge, server_round)
        self._resend = []

    def _consume(self, grid: Grid, current_round: int) -> list[dict[str, Any]]:
        """Pull every outstanding reply that is ready and distil (or discard) it."""
        if not self.pending:
            return []
        consumed = []
        for reply in grid.pull_messages(list(self.pending)):
            info = self.pending.pop(reply.metadata.reply_to_message_id, None)
            if info is None:
                continue
            staleness = current_round - info.server_round
            entry: dict[str, Any] = {
                "edge": info.edge,
                "dispatch-round": info.server_round,
                "consumed-round": current_round,
                "staleness": staleness,
                "seconds": time.monotonic() - info.sent_at,
            }
            if staleness > 0 and self.async_config.late_policy == "discard":
                entry["status"] = "discarded: late"
                log(
                    INFO,
                    "async: round %s: discarded late reply of edge %s (dispatched in round %s)",
                    current_round,
                    info.edge,
                    info.server_round,
                )
            else:
                entry.update(self._use_reply(reply, current_round, info.edge, staleness))
            self._record(entry)
            consumed.append(entry)
        return consumed

    def _use_reply(self, reply: Any, current_round: int, edge: int, staleness: int) -> dict:
        try:
            teachers = self._teachers_from_reply(reply)
        except ValueError as err:
            log(WARNING, "async: round %s: rejected reply of edge %s: %s", current_round, edge, err)
            return {"status": f"rejected: {err}"}
        a = self.async_config
        weight = staleness_weight(staleness, a.staleness_weighting, a.staleness_alpha)
        metrics = self._distill_round(
            current_round, edge, teachers, staleness=staleness, weight=weight
        )
        edge_metrics = reply_metrics(reply)
        metrics.setdefault("edge-status", "ok")
        metrics["status"] = metrics.pop("edge-status")
        metrics["edge-train-acc"] = float(edge_metrics.get("train-acc", float("nan")))
        metrics["simulated-noisy"] = int(edge_metrics.get("simulated-noisy", 0))
        return {k: v for k, v in metrics.items() if not k.startswith(("before/", "after/"))}

    def _expire(self, current_round: int) -> None:
        now = time.monotonic()
        for message_id, info in list(self.pending.items()):
            if now - info.sent_at > self.async_config.edge_deadline:
                del self.pending[message_id]
                log(
                    WARNING,
                    "async: edge %s (round %s) missed its %ss deadline; abandoned",
                    info.edge,
                    info.server_round,
                    self.async_config.edge_deadline,
                )
                self._record(
                    {
                        "edge": info.edge,
                        "dispatch-round": info.server_round,
                        "consumed-round": current_round,
                        "staleness": None,
                        "status": "abandoned: deadline",
                    }
                )

    def _round_metrics(self, consumed: list[dict[str, Any]], edge: int) -> dict[str, Any]:
        used = [c for c in consumed if c.get("status") == "ok"]
        return {
            "edge": edge,
            "consumed": consumed,
            "consumed-count": len(consumed),
            "used-count": len(used),
            "max-staleness": max((c["staleness"] for c in used), default=0),
            "pending": len(self.pending),
        }

    def start(self, grid: Grid, initial_arrays: ArrayRecord, **options: Any) -> Result:
        """Phase 0, then one push per round and non-blocking pulls; then drain or drop.

        ``options`` are Flower's other ``start`` arguments, by keyword: ``num_rounds``,
        ``train_config`` (sent to every edge), ``evaluate_fn`` (the server's end-of-round hook);
        ``timeout`` and ``evaluate_config`` are unused (the ``async-*`` waits apply; there is no
        federated evaluation). After :meth:`restore_checkpoint` it re-sends the outstanding
        work and goes on with the next round (no Phase 0).
        """
        num_rounds, evaluate_fn = options.get("num_rounds", 3), options.get("evaluate_fn")
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        self.nodes.request(grid)
        resumed = self.resumed_round > 0  # restored from a checkpoint: no Phase 0, no round 0
        if not resumed:
            self.phase0()
        result = Result()
        arrays = self._state(self.model)
        result.arrays = arrays
        if evaluate_fn is not None and not resumed:
            result.evaluate_metrics_serverapp[0] = evaluate_fn(0, arrays)
        self.nodes.map(grid, self.cd.round_timeout)
        self._resend_outstanding(grid)
        config = options.get("train_config") or ConfigRecord()
        for server_round in range(self.resumed_round + 1, num_rounds + 1):
            metrics = self._async_round(grid, server_round, arrays, config)
            arrays = self._state(self.model)
            result.arrays = arrays
            self.report(server_round, metrics)
            result.train_metrics_clientapp[server_round] = scalar_metrics(metrics)
            if evaluate_fn is not None:
                result.evaluate_metrics_serverapp[server_round] = evaluate_fn(server_round, arrays)
        self._finish(grid, num_rounds, result, evaluate_fn)
        self.check_edges_trained(num_rounds)
        return result

    def _async_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> dict[str, Any]:
        """Push this round's edge, pull (and distil) what is ready until it answered or
        ``async-round-wait`` passed; the round's metrics."""
        messages = list(self.configure_train(server_round, arrays, config, grid))
        edge = self._current_edge if self._current_edge is not None else -1
        if not messages:
            self.edge_failures.append("no node is connected")
        ids = list(grid.push_messages(messages))
        for message_id, message in zip(ids, messages, strict=True):
            self.pending[message_id] = _Pending(
                server_round, edge, time.monotonic(), message.content
            )
        deadline = time.monotonic() + self.async_config.round_wait
        consumed: list[dict[str, Any]] = []
        while True:
            consumed += self._consume(grid, server_round)
            if not any(i in self.pending for i in ids) or time.monotonic() >= deadline:
                break
            time.sleep(self.async_config.poll_interval)
        if any(i in self.pending for i in ids):
            log(INFO, "async: round %s: edge %s is late; moving on", server_round, edge)
        self._expire(server_round)
        return self._round_metrics(consumed, edge)

    def _finish(self, grid: Grid, num_rounds: int, result: Result, evaluate_fn: Any) -> None:
        """Wait for or drop the replies still outstanding after the last round."""
        final_round = num_rounds + 1
        consumed: list[dict[str, Any]] = []
        if self.pending and self.async_config.final_policy == "wait":
            log(
                INFO,
                "async: waiting up to %ss for %s outstanding repl(ies)",
                self.async_config.final_wait,
                len(self.pending),
            )
            deadline = time.monotonic() + self.async_config.final_wait
            while self.pending and time.monotonic() < deadline:
                consumed += self._consume(grid, final_round)
                if self.pending:
                    time.sleep(self.async_config.poll_interval)
        dropped = []
        for info in self.pending.values():
            dropped.append(
                {
                    "edge": info.edge,
                    "dispatch-round": info.server_round,
                    "consumed-round": None,
                    "staleness": None,
                    "status": "dropped: outstanding after last round",
                }
            )
            log(
                WARNING,
                "async: edge %s (round %s) still outstanding after the last round: dropped",
                info.edge,
                info.server_round,
            )
            self._record(dropped[-1])
        self.pending.clear()
        if not consumed and not dropped:
            return
        arrays = self._state(self.model)
        result.arrays = arrays
        metrics = self._round_metrics(consumed, -1)
        metrics.update({"phase": "drain", "dropped-count": len(dropped)})
        self.report(final_round, metrics)
        if evaluate_fn is not None:
            result.evaluate_metrics_serverapp[final_round] = evaluate_fn(final_round, arrays)


@register_strategy(
    "async-cloned-distillation",
    sections={"cd-": ClonedDistillationConfig, "async-": AsyncConfig},
)
def build_async_cloned_distillation(context: StrategyContext) -> AsyncClonedDistillation:
    """Factory for ``strategy = "async-cloned-distillation"`` (keys ``cd-*`` and ``async-*``)."""
    return AsyncClonedDistillation(
        context.config,
        ClonedDistillationConfig.from_run_config(context.run_config),
        AsyncConfig.from_run_config(context.run_config),
    )
