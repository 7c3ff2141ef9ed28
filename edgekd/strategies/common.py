"""Plumbing every edgekd strategy shares: addressing nodes, checking replies, reporting.

- :func:`instruction` builds a message for one chosen node (Flower's ``Message`` constructor;
  ``Grid.create_message`` is deprecated).
- :class:`NodeMapper` lists the edges: every node of the grid, ordered by the partition it
  reports to ``query.whoami`` (:mod:`edgekd.protocol.common`) when it answers, else by node id
  (node ids are random, only a node knows its partition; a plain Flower ClientApp does not
  answer ``whoami`` and is an edge all the same).
- :func:`error_reason` turns an error reply into one loggable line; :func:`reply_members`
  reads a train reply, edgekd's ensemble form or a plain Flower ClientApp's one model.
- :class:`FederationError` ends a run in which no edge/client could take part.
- :class:`RoundReports` is what a strategy exposes to the server, the only writer of results:
  per-round details (:meth:`RoundReports.round_report`), extra JSON files
  (:meth:`RoundReports.run_files`) and the metrics its accuracy plot draws
  (``accuracy_keys``). A strategy never holds the run's recorder.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from edgekd.protocol import ARRAYS, METRICS, WHOAMI, member_key
from edgekd.protocol.common import NUM_PARTITIONS, PARTITION_ID

__all__ = [
    "CentralEvaluation",
    "FederationError",
    "NodeMapper",
    "RoundReports",
    "StartDriven",
    "content_bytes",
    "error_reason",
    "instruction",
    "reply_members",
    "reply_metrics",
    "scalar_metrics",
]

WHOAMI_TYPE = f"{MessageType.QUERY}.{WHOAMI}"


def instruction(content: RecordDict, message_type: str, node_id: int, group_id: str) -> Message:
    """A message of ``message_type`` carrying ``content`` to node ``node_id``."""
    return Message(content, dst_node_id=node_id, message_type=message_type, group_id=group_id)


def error_reason(reply: Message, *, last_line: bool = False) -> str | None:
    """``"error reply (code C): <line>"`` for an error reply, else None.

    ``<line>`` is the first line of Flower's error reason (the last with ``last_line``: the
    exception of a traceback); Flower's ``<class 'X'>:<'...'>`` form of a ClientApp's
    exception becomes ``X: <its message line>``.
    """
    if not reply.has_error():
        return None
    return f"error reply (code {reply.error.code}): {_reason_line(reply, last_line)}"


_FLOWER_REASON = re.compile(r"^<class '([^']*)'>:<'(.*)'>$", re.DOTALL)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason_line(reply: Message, last_line: bool = False) -> str:
    """One line of an error reply's reason.

    Flower's runtimes write a ClientApp's exception as ``<class 'X'>:<'text'>`` (in Ray,
    ``text`` is a whole traceback ending in ``... Message: <what the ClientApp raised>``):
    that becomes ``X: <the last "Message:" line, else the last line>``.
    """
    text = _ANSI.sub("", reply.error.reason or "").strip()
    match = _FLOWER_REASON.match(text)
    if match:
        inner = [line.strip() for line in match.group(2).splitlines() if line.strip()]
        messages = [line for line in inner if "Message: " in line] or inner or [""]
        return f"{match.group(1).rsplit('.', 1)[-1]}: {messages[-1]}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if last_line else lines[0]) if lines else ""


def reply_metrics(reply: Message) -> Mapping[str, Any]:
    """The reply's ``metrics`` record (or its only MetricRecord, as Flower's FedAvg reads it);
    empty when it has none."""
    records = reply.content.metric_records
    if METRICS in records:
        return records[METRICS]
    return next(iter(records.values())) if len(records) == 1 else {}


def reply_members(
    reply: Message, ensemble_size: int, reference: Mapping[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """The model states of a train reply, checked against ``reference``.

    Two forms are valid (:mod:`edgekd.protocol.cloned_distillation`): edgekd's, whose
    ``metrics`` carry ``ensemble-size`` (it must equal ``ensemble_size``) and whose members
    are ``arrays``, ``arrays-1``, ...; and a plain Flower ClientApp's, without
    ``ensemble-size``: exactly one ArrayRecord (``arrays`` by convention), one model (one
    teacher, whatever ``ensemble_size`` was asked). Raises ``ValueError`` naming what is
    wrong: an error reply, another ``ensemble-size``, a missing member or no arrays, other
    array names or shapes than ``reference``, or NaN/inf values.
    """
    if reply.has_error():
        raise ValueError(f"edge replied with error {reply.error.code}: {_reason_line(reply)}")
    content = reply.content
    raw_size = reply_metrics(reply).get("ensemble-size")
    if raw_size is None:
        records = content.array_records
        if len(records) != 1:
            raise ValueError(
                f"reply has {len(records)} ArrayRecords and no 'ensemble-size' metric "
                "(a plain train reply carries exactly one model)"
            )
        state = next(iter(records.values())).to_torch_state_dict()
        _check_state(ARRAYS, state, reference)
        return [state]
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


class FederationError(RuntimeError):
    """No client could take part in a run: it ends with this one-line reason, never silently.

    Raised by a strategy after its rounds when not one edge/client was reached or trained
    (the ServerApp then fails, ``flwr run``'s status says why, and :mod:`edgekd.launch` and
    :mod:`edgekd.local` exit non-zero with this line).
    """


class NodeMapper:
    """The edges of a run: the grid's nodes, ordered by the partition each reports.

    Parameters
    ----------
    expected : int
        The run config's ``num-partitions``: how many nodes to wait for when no node
        reports its own ``num-partitions`` in ``query.whoami``.
    name : str
        The strategy name, used in log lines.
    settle : float, optional
        Seconds the set of connected nodes must stay unchanged, every one of them answered,
        before the mapping ends with fewer nodes than expected (default 5).
    whoami_timeout : float, optional
        Seconds to wait for one batch of ``query.whoami`` replies (default 60); a node that
        does not answer in time is an edge without a partition id.
    whoami_batch : int, optional
        Nodes asked at a time (default 256). Flower's simulation engine scans every stored
        message for every node on each delivery pass, so pushing 10,000 queries at once makes
        each pass quadratic and lets a single timeout leave thousands of queries unanswered in
        the SuperLink, delaying every later round's messages behind them (a profile of
        the 10,000-node benchmark run); batches keep both bounded.

    Notes
    -----
    Every node of ``grid.get_node_ids()`` is an edge. ``query.whoami``
    (:mod:`edgekd.protocol.common`) is an optional refinement: a node that reports its
    ``partition-id`` is ordered by it; a node that answers with an error (a plain Flower
    ClientApp has no ``whoami`` handler), an unusable reply or a partition already claimed
    is still an edge, ordered after the mapped ones by node id, its reason in ``unmapped``.
    :meth:`request` pushes the queries without waiting (a strategy can train meanwhile);
    :meth:`map` collects the answers and asks the nodes not asked yet until every connected
    node answered and either as many nodes as expected are connected (the ``num-partitions``
    the nodes report, else ``expected``) or the node set was stable for ``settle`` seconds;
    or ``timeout`` passes.
    """

    def __init__(
        self,
        expected: int,
        name: str,
        *,
        settle: float = 5.0,
        whoami_timeout: float = 60.0,
        whoami_batch: int = 256,
    ) -> None:
        if whoami_batch < 1:
            raise ValueError(f"whoami_batch must be >= 1, got {whoami_batch}")
        self.expected = expected
        self.name = name
        self.settle = settle
        self.whoami_timeout = whoami_timeout
        self.whoami_batch = whoami_batch
        self.node_of_partition: dict[int, int] = {}
        self.unmapped: dict[int, str] = {}
        self.reported_partitions: set[int] = set()
        self.excluded: dict[int, str] = {}
        self.mapped = False
        self._pending: set[str] = set()

    @property
    def edges(self) -> list[int]:
        """Node ids of the edges: mapped ones by partition id, then the others by node id."""
        mapped = [node for _, node in sorted(self.node_of_partition.items())]
        nodes = mapped + sorted(self.unmapped)
        return [node for node in nodes if node not in self.excluded]

    def request(self, grid: Grid) -> None:
        """Push ``query.whoami`` to the first batch of nodes; :meth:`map` collects the answers.

        :meth:`map` asks the other nodes, one batch at a time.
        """
        nodes = sorted(grid.get_node_ids())[: self.whoami_batch]
        if nodes:
            self._pending = set(grid.push_messages([self._whoami(n) for n in nodes]))

    def map(self, grid: Grid, timeout: float) -> list[int]:
        """Learn the edges within ``timeout`` seconds; return them in edge order."""
        deadline = time.monotonic() + timeout
        if self._pending:
            self._collect_pending(grid, timeout=min(self.whoami_timeout, timeout))
        nodes: set[int] = set()
        stable_since = time.monotonic()
        while True:
            connected = set(grid.get_node_ids())
            if connected != nodes:
                nodes, stable_since = connected, time.monotonic()
            asked = set(self.node_of_partition.values()) | set(self.unmapped)
            self._ask(grid, sorted(connected - asked), deadline)
            answered = set(self.node_of_partition.values()) | set(self.unmapped)
            wanted = max(self.reported_partitions, default=self.expected)
            settled = len(connected) >= wanted or time.monotonic() - stable_since >= self.settle
            if (connected and answered >= connected and settled) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.mapped = True
        self._log_mapping()
        return self.edges

    def _ask(self, grid: Grid, nodes: list[int], deadline: float) -> None:
        """Ask ``nodes`` who they are, a batch at a time until ``deadline``.

        A node that does not answer in time, or is not asked before the deadline, stays an
        edge without a partition id.
        """
        if not nodes:
            return
        asked = 0
        while asked < len(nodes) and (asked == 0 or time.monotonic() <= deadline):
            batch = nodes[asked : asked + self.whoami_batch]
            messages = [self._whoami(n) for n in batch]
            for reply in grid.send_and_receive(messages, timeout=self.whoami_timeout):
                self._record(reply)
            asked += len(batch)
        mapped = set(self.node_of_partition.values())  # one set: O(N), not O(N) per node
        for index, node in enumerate(nodes):
            if node not in self.unmapped and node not in mapped:
                self.unmapped[node] = (
                    f"no reply to {WHOAMI_TYPE} within {self.whoami_timeout:g} s"
                    if index < asked
                    else f"not asked {WHOAMI_TYPE} before the mapping's timeout"
                )

    def _log_mapping(self) -> None:
        log(
            INFO,
            "%s: %s edges (%s with a partition-id, %s without: ordered by node id)",
            self.name,
            len(self.edges),
            len(self.node_of_partition),
            len(self.unmapped),
        )
        reported = sorted(self.reported_partitions)
        if reported and reported != [self.expected]:
            log(
                WARNING,
                "%s: nodes report num-partitions %s (their node config decides their data); "
                "the run config's num-partitions=%s applies only to nodes without one",
                self.name,
                ", ".join(map(str, reported)),
                self.expected,
            )

    def exclude(self, node: int, reason: str) -> None:
        """Stop addressing ``node`` (it is no longer an edge), for ``reason``."""
        self.excluded[node] = reason

    def label(self, node: int) -> int | str:
        """The partition id of ``node``, or ``"node <id>"`` when it reported none."""
        for pid, node_id in self.node_of_partition.items():
            if node_id == node:
                return pid
        return f"node {node}"

    def partition_of(self, reply: Message) -> int:
        """The partition id of the node that sent ``reply`` (-1 when unknown)."""
        label = self.label(reply.metadata.src_node_id)
        return label if isinstance(label, int) else -1

    def position(self, reply: Message) -> int:
        """The sender's index in the edge order (``len(edges)`` when it is not an edge)."""
        edges = self.edges
        node = reply.metadata.src_node_id
        return edges.index(node) if node in edges else len(edges)

    def messages(self, content: RecordDict, message_type: str, group_id: str) -> list[Message]:
        """One message with ``content`` to every edge, in edge order."""
        return [instruction(content, message_type, node, group_id) for node in self.edges]

    def _whoami(self, node: int) -> Message:
        return instruction(RecordDict(), WHOAMI_TYPE, node, WHOAMI)

    def _record(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        reason = error_reason(reply, last_line=True)
        if reason is None:
            pid, reason = _reported_partition(reply)
            if pid is not None and pid in self.node_of_partition:
                reason = f"partition-id {pid} already claimed by node {self.node_of_partition[pid]}"
            elif pid is not None:
                self.node_of_partition[pid] = node
                total = reply.content[METRICS].get(NUM_PARTITIONS)
                if isinstance(total, int | float) and total > 0:
                    self.reported_partitions.add(int(total))
                return
        self.unmapped[node] = reason or "no partition-id"
        log(
            INFO,
            "%s: node %s has no partition-id (%s); it is still an edge, ordered by node id",
            self.name,
            node,
            reason,
        )

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


def _reported_partition(reply: Message) -> tuple[int | None, str | None]:
    """``(partition-id, None)`` from a whoami reply, or ``(None, why not)``."""
    if METRICS not in reply.content.metric_records:
        return None, "whoami reply has no 'metrics' record"
    value = reply.content[METRICS].get(PARTITION_ID)
    if not isinstance(value, int | float) or value < 0 or int(value) != value:
        return None, f"whoami reply has no valid partition-id ({value!r})"
    return int(value), None


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


class CentralEvaluation:
    """Strategy mixin (before ``Strategy`` in the bases): no federated evaluation, the server
    evaluates its own model centrally, so there is nothing to send or aggregate."""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation."""
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Nothing to aggregate."""
        return None


class StartDriven:
    """Strategy mixin (before ``Strategy`` in the bases) for a strategy whose ``start`` runs
    every exchange itself: Flower's per-round training hooks are never called, so they send
    and aggregate nothing."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Unused: ``start`` runs the exchanges."""
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Unused: ``start`` runs the exchanges."""
        return None, None
