"""Tests for the plumbing strategies share: node mapping, messages, reply checks, reports."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgekd.inprocess import InProcessGrid
from edgekd.protocol import METRICS, member_key
from edgekd.strategies.common import (
    NodeMapper,
    RoundReports,
    error_reason,
    instruction,
    reply_members,
)


def _whoami_app(failing: set[int]) -> ClientApp:
    """A ClientApp that answers query.whoami with its partition, or raises for ``failing``."""
    app = ClientApp()

    @app.query("whoami")
    def whoami(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid in failing:
            raise RuntimeError(f"partition {pid} has no data")
        return Message(RecordDict({METRICS: MetricRecord({"partition-id": pid})}), reply_to=msg)

    return app


def test_mapper_maps_every_partition_and_addresses_them_in_order() -> None:
    """Every node answers: the edges are the nodes in partition order, messages follow it.

    Prepare: 4 in-process nodes (random node ids) answering whoami.
    Execute: map, then messages for a train instruction.
    Assert: edges and partition -> node equal the grid's own mapping; one message per edge,
    in partition order, of the given type and group; partition_of inverts the map.
    """
    grid = InProcessGrid(_whoami_app(set()), {}, num_nodes=4, seed=3)
    mapper = NodeMapper(4, "test")
    edges = mapper.map(grid, timeout=30)
    assert edges == [grid.node_id_of(pid) for pid in range(4)]
    assert mapper.node_of_partition == {pid: grid.node_id_of(pid) for pid in range(4)}
    messages = mapper.messages(RecordDict(), MessageType.TRAIN, "7")
    assert [m.metadata.dst_node_id for m in messages] == [grid.node_id_of(p) for p in range(4)]
    assert {(m.metadata.message_type, m.metadata.group_id) for m in messages} == {
        (MessageType.TRAIN, "7")
    }
    reply = Message(RecordDict(), reply_to=messages[2])
    reply.metadata.__dict__["_src_node_id"] = grid.node_id_of(2)
    assert mapper.partition_of(reply) == 2


def test_node_failing_whoami_is_still_an_edge_after_the_mapped_ones() -> None:
    """A node whose whoami fails is still an edge, ordered after the mapped nodes.

    Prepare: 3 nodes, partition 1 raising in whoami; a 60 s timeout.
    Execute: map.
    Assert: partitions 0 and 2 mapped; the edges are nodes 0, 2, then 1; node 1's reason is
    the error reply; it returned in far less than the timeout; each node was asked once.
    """
    grid = InProcessGrid(_whoami_app({1}), {}, num_nodes=3)
    mapper = NodeMapper(3, "test")
    started = time.monotonic()
    edges = mapper.map(grid, timeout=60)
    assert time.monotonic() - started < 10
    assert set(mapper.node_of_partition) == {0, 2}
    assert edges == [grid.node_id_of(0), grid.node_id_of(2), grid.node_id_of(1)]
    assert "partition 1 has no data" in mapper.unmapped[grid.node_id_of(1)]
    assert len(grid.delivered) == 3


def test_nodes_without_whoami_are_edges_in_node_id_order() -> None:
    """A plain Flower ClientApp (no query handler) gives unmapped edges, sorted by node id.

    Prepare: 2 nodes of a ClientApp with only a train handler; the mapper expects 4 (the run
    config's num-partitions) and settles after 0.3 s.
    Execute: map.
    Assert: both nodes are edges, in ascending node id; each has a reason naming the missing
    query function; the mapping ended once the node set had settled, well before the timeout.
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    grid = InProcessGrid(app, {}, num_nodes=2, seed=5)
    mapper = NodeMapper(4, "test", settle=0.3)
    started = time.monotonic()
    edges = mapper.map(grid, timeout=60)
    assert time.monotonic() - started < 10
    assert edges == sorted(grid.get_node_ids())
    assert mapper.node_of_partition == {}
    assert all("No query function registered" in r for r in mapper.unmapped.values())


def test_node_that_never_answers_whoami_is_still_an_edge() -> None:
    """A node whose whoami reply does not come within the whoami timeout is still an edge.

    Prepare: 3 nodes; partition 0's whoami reply is held back forever; whoami timeout 0.3 s.
    Execute: map.
    Assert: partitions 1 and 2 mapped and first; partition 0's node last, its reason naming
    the timeout; the mapping took far less than the overall timeout.
    """

    def hold(message: Message) -> int:
        held = message.metadata.dst_node_id == grid.node_id_of(0)
        return 10**9 if held and message.metadata.message_type == "query.whoami" else 0

    grid = InProcessGrid(_whoami_app(set()), {}, num_nodes=3, delay_pulls=hold)
    mapper = NodeMapper(3, "test", whoami_timeout=0.3)
    started = time.monotonic()
    edges = mapper.map(grid, timeout=60)
    assert time.monotonic() - started < 10
    assert edges == [grid.node_id_of(1), grid.node_id_of(2), grid.node_id_of(0)]
    assert "no reply to query.whoami within 0.3 s" in mapper.unmapped[grid.node_id_of(0)]


def test_partition_claimed_twice_keeps_both_nodes() -> None:
    """Two nodes claiming the same partition are both edges; the second one is unmapped.

    Prepare: 2 nodes whose node configs both say partition-id 0.
    Execute: map.
    Assert: 2 edges; one mapped to partition 0, the other unmapped with "already claimed".
    """
    configs = [{"partition-id": 0, "num-partitions": 2}] * 2
    grid = InProcessGrid(_whoami_app(set()), {}, num_nodes=2, node_configs=configs)
    mapper = NodeMapper(2, "test")
    edges = mapper.map(grid, timeout=30)
    assert len(edges) == 2 and set(edges) == set(grid.get_node_ids())
    assert list(mapper.node_of_partition) == [0]
    (reason,) = mapper.unmapped.values()
    assert "already claimed" in reason


def test_mapper_collects_the_answers_it_requested_earlier() -> None:
    """request() pushes the queries; map() collects those answers instead of asking again.

    Prepare: 3 nodes.
    Execute: request, then map.
    Assert: the map is complete and each node got exactly one whoami.
    """
    grid = InProcessGrid(_whoami_app(set()), {}, num_nodes=3)
    mapper = NodeMapper(3, "test")
    mapper.request(grid)
    assert mapper.map(grid, timeout=30) == [grid.node_id_of(p) for p in range(3)]
    assert len(grid.delivered) == 3


class _BatchRecordingGrid(InProcessGrid):
    """An in-process grid that records the size of every push."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.pushes: list[int] = []

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.pushes.append(len(messages))
        return super().push_messages(messages)


def test_mapper_asks_in_batches_and_maps_every_node_once() -> None:
    """whoami goes out in batches of whoami_batch, request() included; the map is complete.

    Prepare: 10 nodes; whoami_batch 3.
    Execute: request (pushes the first batch), then map.
    Assert: pushes of 3, 3, 3, 1 (no push larger than a batch); every partition mapped in
    order; each node got exactly one whoami.
    """
    grid = _BatchRecordingGrid(_whoami_app(set()), {}, num_nodes=10, seed=1)
    mapper = NodeMapper(10, "test", whoami_batch=3)
    mapper.request(grid)
    edges = mapper.map(grid, timeout=30)
    assert grid.pushes == [3, 3, 3, 1]
    assert edges == [grid.node_id_of(p) for p in range(10)]
    assert len(grid.delivered) == 10


def test_nodes_not_asked_before_the_mapping_timeout_are_edges_with_that_reason() -> None:
    """Past the mapping's deadline no further batch is sent; the rest are still edges.

    Prepare: 4 nodes, batch 1, every whoami reply held back; whoami timeout 0.2 s, mapping
    timeout 0.3 s.
    Execute: map.
    Assert: 4 edges, none mapped; the first asked node's reason is the reply timeout, at
    least one node's reason says it was not asked before the timeout; fewer than 4 pushes.
    """

    def hold(message: Message) -> int:
        return 10**9 if message.metadata.message_type == "query.whoami" else 0

    grid = _BatchRecordingGrid(_whoami_app(set()), {}, num_nodes=4, delay_pulls=hold)
    mapper = NodeMapper(4, "test", whoami_timeout=0.2, whoami_batch=1)
    edges = mapper.map(grid, timeout=0.3)
    assert sorted(edges) == sorted(grid.get_node_ids()) and mapper.node_of_partition == {}
    reasons = [mapper.unmapped[node] for node in sorted(grid.get_node_ids())]
    assert "within 0.2 s" in reasons[0]
    assert any("before the mapping's timeout" in r for r in reasons)
    assert len(grid.pushes) < 4


def test_mapper_refuses_an_empty_batch() -> None:
    """whoami_batch < 1 is refused with the value named."""
    with pytest.raises(ValueError, match="whoami_batch must be >= 1, got 0"):
        NodeMapper(2, "test", whoami_batch=0)


def test_instruction_uses_the_message_constructor_without_deprecation() -> None:
    """instruction() builds a Message for one node without Flower's deprecated create_message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = instruction(RecordDict(), "query.x", 42, "g")
    assert (message.metadata.dst_node_id, message.metadata.message_type) == (42, "query.x")
    assert message.metadata.group_id == "g"


def _train_reply(states: list[dict[str, torch.Tensor]], size: object) -> Message:
    request = instruction(RecordDict(), MessageType.TRAIN, 5, "1")
    content = RecordDict({METRICS: MetricRecord({"ensemble-size": size})})  # type: ignore[dict-item]
    for index, state in enumerate(states):
        content[member_key(index)] = ArrayRecord(state)
    return Message(content, reply_to=request)


def test_reply_members_accepts_a_complete_ensemble() -> None:
    """Two members with the reference's names and shapes come back as two state dicts."""
    reference = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    states = [
        {"w": torch.ones(2, 3), "b": torch.ones(3)},
        {"w": torch.zeros(2, 3), "b": torch.ones(3)},
    ]
    members = reply_members(_train_reply(states, 2), 2, reference)
    assert len(members) == 2 and torch.equal(members[0]["w"], torch.ones(2, 3))


@pytest.mark.parametrize(
    ("states", "size", "message"),
    [
        ([{"w": torch.ones(2, 3)}], 2, "ensemble-size 2, expected 1"),
        ([], 1, "misses ensemble member 'arrays'"),
        ([{"v": torch.ones(2, 3)}], 1, "wrong keys"),
        ([{"w": torch.ones(3, 2)}], 1, r"shape \(3, 2\), expected \(2, 3\)"),
        ([{"w": torch.full((2, 3), float("nan"))}], 1, "NaN/inf"),
    ],
)
def test_reply_members_names_what_is_wrong(
    states: list[dict[str, torch.Tensor]], size: int, message: str
) -> None:
    """A reply with the wrong size, a missing member, other names or shapes, or NaN is refused."""
    with pytest.raises(ValueError, match=message):
        reply_members(_train_reply(states, size), 1, {"w": torch.zeros(2, 3)})


def test_reply_members_accepts_a_plain_flower_reply_as_one_model() -> None:
    """A reply without ensemble-size is one model, in "arrays" or in its only ArrayRecord.

    Prepare: replies of a plain Flower ClientApp: "arrays" + metrics with num-examples only;
    one ArrayRecord under another name; no ArrayRecord at all.
    Execute: reply_members asking for an ensemble of 3.
    Assert: one state each for the first two; the third is refused, naming what is missing.
    """
    reference = {"w": torch.zeros(2, 3)}
    request = instruction(RecordDict(), MessageType.TRAIN, 5, "1")
    for key in ("arrays", "model"):
        content = RecordDict(
            {
                key: ArrayRecord({"w": torch.ones(2, 3)}),
                "metrics": MetricRecord({"num-examples": 8}),
            }
        )
        (state,) = reply_members(Message(content, reply_to=request), 3, reference)
        assert torch.equal(state["w"], torch.ones(2, 3))
    empty = Message(RecordDict({"metrics": MetricRecord({"num-examples": 8})}), reply_to=request)
    with pytest.raises(ValueError, match="0 ArrayRecords and no 'ensemble-size'"):
        reply_members(empty, 3, reference)


@pytest.mark.parametrize(
    "reason",
    [
        "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException "
        "occurred. Message: No train function registered with name 'default''>",
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor"
        ".run()\x1b[39m (pid=1, ip=1.2.3.4)\nTraceback (most recent call last):\n  File x\n"
        "ValueError: No train function registered with name 'default'\n\nThe above exception "
        "...\nflwr.clientapp.client_app.ClientAppException: \nException ClientAppException "
        "occurred. Message: No train function registered with name 'default''>",
    ],
)
def test_flower_wrapped_exception_reason_becomes_one_line(reason: str) -> None:
    """Flower's "<class 'X'>:<'...'>" reasons (in process and from a Ray actor, with a
    traceback and colour codes) become "X: <the message line>", one line."""
    from flwr.app import Error

    request = instruction(RecordDict(), MessageType.TRAIN, 5, "1")
    reply = Message(Error(code=2, reason=reason), reply_to=request)
    line = error_reason(reply)
    assert line is not None and "\n" not in line and "\x1b" not in line
    assert line.startswith("error reply (code 2): ")
    assert "ClientAppException" in line.split(":")[1]
    assert line.endswith("Message: No train function registered with name 'default'")


def test_error_reason_is_one_line() -> None:
    """An error reply becomes one line with its code (first or last line of the reason)."""
    from flwr.app import Error

    request = instruction(RecordDict(), MessageType.TRAIN, 5, "1")
    reply = Message(Error(code=2, reason="ValueError: bad\nTraceback\nlast line"), reply_to=request)
    assert error_reason(reply) == "error reply (code 2): ValueError: bad"
    assert error_reason(reply, last_line=True) == "error reply (code 2): last line"
    assert error_reason(Message(RecordDict(), reply_to=request)) is None


def test_round_reports_merge_per_round_and_copy_out() -> None:
    """report() merges into a round's report; round_report returns a copy (empty if none)."""

    class Reporting(RoundReports):
        pass

    strategy = Reporting()
    strategy.report(1, {"a": 1, "b": [1]})
    strategy.report(1, {"b": [2], "c": "x"})
    report = strategy.round_report(1)
    assert report == {"a": 1, "b": [2], "c": "x"}
    report["a"] = 99  # type: ignore[index]
    assert strategy.round_report(1)["a"] == 1
    assert strategy.round_report(2) == {}
    assert Reporting.accuracy_keys == ("test-acc",) and Reporting.central_evaluation
