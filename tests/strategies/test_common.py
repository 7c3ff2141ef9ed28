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
    """Every node answers: the map is complete and messages go out in partition order.

    Prepare: 4 in-process nodes (random node ids) answering whoami.
    Execute: map, then messages for a train instruction.
    Assert: partition -> node equals the grid's own mapping; one message per partition,
    sorted by partition, of the given type and group; partition_of inverts the map.
    """
    grid = InProcessGrid(_whoami_app(set()), {}, num_nodes=4, seed=3)
    mapper = NodeMapper(4, "test")
    mapping = mapper.map(grid, timeout=30)
    assert mapping == {pid: grid.node_id_of(pid) for pid in range(4)}
    messages = mapper.messages(RecordDict(), MessageType.TRAIN, "7")
    assert [m.metadata.dst_node_id for m in messages] == [grid.node_id_of(p) for p in range(4)]
    assert {(m.metadata.message_type, m.metadata.group_id) for m in messages} == {
        (MessageType.TRAIN, "7")
    }
    reply = Message(RecordDict(), reply_to=messages[2])
    reply.metadata.__dict__["_src_node_id"] = grid.node_id_of(2)
    assert mapper.partition_of(reply) == 2


def test_mapper_stops_when_every_node_answered_even_with_a_failure() -> None:
    """A node whose whoami fails is left out; the mapper does not wait for its timeout.

    Prepare: 3 nodes, partition 1 raising in whoami; a 60 s timeout.
    Execute: map.
    Assert: partitions 0 and 2 mapped, partition 1's node in ``failed``; it returned in far
    less than the timeout; each node was asked exactly once.
    """
    grid = InProcessGrid(_whoami_app({1}), {}, num_nodes=3)
    mapper = NodeMapper(3, "test")
    started = time.monotonic()
    mapping = mapper.map(grid, timeout=60)
    assert time.monotonic() - started < 10
    assert set(mapping) == {0, 2}
    assert mapper.failed == {grid.node_id_of(1)}
    assert len(grid.delivered) == 3


def test_mapper_collects_the_answers_it_requested_earlier() -> None:
    """request() pushes the queries; map() collects those answers instead of asking again.

    Prepare: 3 nodes.
    Execute: request, then map.
    Assert: the map is complete and each node got exactly one whoami.
    """
    grid = InProcessGrid(_whoami_app(set()), {}, num_nodes=3)
    mapper = NodeMapper(3, "test")
    mapper.request(grid)
    assert mapper.map(grid, timeout=30) == {p: grid.node_id_of(p) for p in range(3)}
    assert len(grid.delivered) == 3


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
