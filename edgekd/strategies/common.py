"""Plumbing every edgekd strategy shares: addressing nodes, checking replies, reporting.

- :func:`instruction` builds a message for one chosen node (Flower's ``Message`` constructor;
  ``Grid.create_message`` is deprecated).
- :class:`NodeMapper` maps partition ids to node ids with ``query.whoami``
  (:mod:`edgekd.protocol.common`): node ids are random, only a node knows its partition.
- :func:`error_reason` turns an error reply into one loggable line.
- :class:`RoundReports` is what a strategy exposes to the server, the only writer of results:
  per-round details (:meth:`RoundReports.round_report`), extra JSON files
  (:meth:`RoundReports.run_files`) and the metrics its accuracy plot draws
  (``accuracy_keys``). A strategy never holds the run's recorder.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO, WARNING
from typing import Any, ClassVar

import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from edgekd.protocol import METRICS, WHOAMI, member_key

__all__ = [
    "NodeMapper",
    "RoundReports",
    "content_bytes",
    "error_reason",
    "instruction",
    "reply_members",
    "scalar_metrics",
]

WHOAMI_TYPE = f"{MessageType.QUERY}.{WHOAMI}"


def instruction(content: RecordDict, message_type: str, node_id: int, group_id: str) -> Message:
    """A message of ``message_type`` carrying ``content`` to node ``node_id``."""
    return Message(content, dst_node_id=node_id, message_type=message_type, group_id=group_id)


def error_reason(reply: Message, *, last_line: bool = False) -> str | None:
    """``"error reply (code C): <line>"`` for an error reply, else None.

    ``<line>`` is the first line of Flower's error reason (the last with ``last_line``: the
    exception of a traceback).
    """
    if not reply.has_error():
        return None
    lines = (reply.error.reason or "").strip().splitlines()
    line = (lines[-1] if last_line else lines[0]) if lines else ""
    return f"error reply (code {reply.error.code}): {line}"


def reply_members(
    reply: Message, ensemble_size: int, reference: Mapping[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """The ``ensemble-size`` model states of a train reply, checked against ``reference``.

    Raises ``ValueError`` naming what is wrong: an error reply, no ``metrics``, another
    ``ensemble-size``, a missing member (:func:`edgekd.protocol.member_key`), other array
    names or shapes than ``reference``, or NaN/inf values.
    """
    if reply.has_error():
        raise ValueError(
            f"edge replied with error {reply.error.code}: "
            f"{(reply.error.reason or '').splitlines()[:1]}"
        )
    content = reply.content
    if METRICS not in content.metric_records:
        raise ValueError("reply has no 'metrics' record")
    raw_size = content[METRICS].get("ensemble-size", 1)
    if not isinstance(raw_size, int | float) or raw_size != ensemble_size:
        raise ValueError(f"reply has ensemble-size {raw_size!r}, expected {ensemble_size}")
    states = []
    for index in range(int(raw_size)):
        key = member_key(index)
        if key not in content.array_records:
            raise ValueError(f"reply misses ensemble member {key!r}")
        states.append(content.array_records[key].to_torch_state_dict())
        _check_state(key, states[-1], reference)
    return states


def _check_state(
    key: str, state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> None:
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


def content_bytes(message: Message) -> int:
    """Payload bytes of a message: arrays, configs and metrics (0 for an error reply)."""
    if not message.has_content():
        return 0
    return sum(record.count_bytes() for record in message.content.values())


def scalar_metrics(metrics: Mapping[str, Any]) -> MetricRecord:
    """The numeric entries of ``metrics`` as a MetricRecord of floats."""
    return MetricRecord({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})


class NodeMapper:
    """The partition -> node map of a run, learnt from ``query.whoami`` replies.

    Parameters
    ----------
    expected : int
        The number of partitions (``num-partitions``).
    name : str
        The strategy name, used in log lines.

    Notes
    -----
    :meth:`request` pushes the queries without waiting (a strategy can train meanwhile);
    :meth:`map` collects those answers and asks the nodes not asked yet, until every
    partition is mapped, or every connected node has answered (a node that answers with an
    error is logged and left out: its partition gets no messages), or ``timeout`` passes.
    """

    def __init__(self, expected: int, name: str) -> None:
        self.expected = expected
        self.name = name
        self.node_of_partition: dict[int, int] = {}
        self.failed: set[int] = set()
        self._pending: set[str] = set()

    def request(self, grid: Grid) -> None:
        """Push ``query.whoami`` to every connected node; :meth:`map` collects the answers."""
        messages = [self._whoami(node) for node in grid.get_node_ids()]
        if messages:
            self._pending = set(grid.push_messages(messages))

    def map(self, grid: Grid, timeout: float) -> dict[int, int]:
        """Map every partition it can within ``timeout`` seconds; return the map."""
        deadline = time.monotonic() + timeout
        if self._pending:
            self._collect_pending(grid, timeout=min(60.0, timeout))
        while len(self.node_of_partition) < self.expected:
            node_ids = list(grid.get_node_ids())
            known = set(self.node_of_partition.values()) | self.failed
            messages = [self._whoami(node) for node in node_ids if node not in known]
            for reply in grid.send_and_receive(messages, timeout=60) if messages else []:
                self._record(reply)
            answered = set(self.node_of_partition.values()) | self.failed
            if (
                len(self.node_of_partition) >= self.expected
                or (len(node_ids) >= self.expected and answered >= set(node_ids))
                or time.monotonic() > deadline
            ):
                break
            time.sleep(1.0)
        log(
            INFO,
            "%s: %s/%s partitions mapped to nodes (%s failed)",
            self.name,
            len(self.node_of_partition),
            self.expected,
            len(self.failed),
        )
        return self.node_of_partition

    def partition_of(self, reply: Message) -> int:
        """The partition id of the node that sent ``reply`` (-1 when unknown)."""
        node = reply.metadata.src_node_id
        for pid, node_id in self.node_of_partition.items():
            if node_id == node:
                return pid
        return -1

    def messages(self, content: RecordDict, message_type: str, group_id: str) -> list[Message]:
        """One message with ``content`` to every mapped node, in partition order."""
        return [
            instruction(content, message_type, node, group_id)
            for _, node in sorted(self.node_of_partition.items())
        ]

    def _whoami(self, node: int) -> Message:
        return instruction(RecordDict(), WHOAMI_TYPE, node, WHOAMI)

    def _record(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        reason = error_reason(reply, last_line=True)
        if reason is not None:
            self.failed.add(node)
            log(WARNING, "%s: node %s failed whoami: %s", self.name, node, reason)
            return
        self.node_of_partition[int(reply.content[METRICS]["partition-id"])] = node

    def _collect_pending(self, grid: Grid, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pending:
            for reply in grid.pull_messages(list(self._pending)):
                self._pending.discard(reply.metadata.reply_to_message_id)
                self._record(reply)
            if not self._pending or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self._pending = set()


class RoundReports:
    """Mixin: what a strategy reports to the server, which alone writes the results.

    The server calls :meth:`round_report` once per round (from its per-round
    ``evaluate_fn``), records it in ``metrics.csv``/``metrics.json`` next to its central
    evaluation, and writes :meth:`run_files`; ``accuracy_keys`` are the metrics of the
    accuracy plot and ``central_evaluation`` says whether the server evaluates the returned
    arrays on the test split.
    """

    accuracy_keys: ClassVar[tuple[str, ...]] = ("test-acc",)
    central_evaluation: ClassVar[bool] = True

    def report(self, server_round: int, metrics: Mapping[str, Any]) -> None:
        """Add ``metrics`` to the report of ``server_round`` (later keys win)."""
        reports: dict[int, dict[str, Any]] = self.__dict__.setdefault("_round_reports", {})
        reports.setdefault(server_round, {}).update(metrics)

    def round_report(self, server_round: int) -> Mapping[str, Any]:
        """The JSON-serialisable details of ``server_round`` (empty when none)."""
        return dict(self.__dict__.get("_round_reports", {}).get(server_round, {}))

    def run_files(self) -> Mapping[str, Any]:
        """Extra JSON files of the run, by file name (none by default)."""
        return {}
