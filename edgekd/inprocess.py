"""An in-process Flower ``Grid`` that delivers real messages to a ClientApp in this process.

:mod:`edgekd.local` runs experiments on it (the "raw loop" of the overhead benchmark), and
tests use it to drive a strategy with real :class:`flwr.app.Message` objects and a real
ClientApp without a SuperLink or Ray. Semantics follow Flower's grids:

- ``push_messages`` returns one id per message; the ClientApp runs when the reply is first
  pulled (or immediately with ``eager=True``).
- ``pull_messages`` returns the replies for the given ids and forgets them (a reply is consumed
  once, as on a SuperLink); ids whose reply is held back by ``delay_pulls`` are skipped.
- An exception in the ClientApp becomes an error reply with code 2 and the traceback as reason,
  exactly what Flower's ClientApp runtime sends.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.common import DEFAULT_TTL, now
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["CLIENT_APP_EXCEPTION", "InProcessGrid"]

CLIENT_APP_EXCEPTION = 2


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    run_config : Mapping[str, Any]
        ``context.run_config`` seen by the nodes.
    num_nodes : int
        Number of nodes; node ``i`` gets ``partition-id=i`` and ``num-partitions=num_nodes``
        unless ``node_configs`` is given.
    node_configs : list of dict, optional
        Explicit node configs, one per node.
    seed : int
        Seeds the random 64-bit node ids.
    delay_pulls : Callable[[Message], int], optional
        Number of ``pull_messages`` calls for which a message's reply stays unavailable
        (simulates a late edge without sleeping).
    workers : int
        0 (default): a message runs when its reply is first pulled, in the caller's thread.
        ``> 0``: messages run in that many background threads from the moment they are pushed,
        like virtual clients on a SuperLink, so a ClientApp that sleeps (a late edge) does not
        block the server.
    """

    def __init__(
        self,
        client_app: ClientApp,
        run_config: Mapping[str, Any],
        num_nodes: int,
        *,
        node_configs: list[dict[str, Any]] | None = None,
        seed: int = 0,
        delay_pulls: Callable[[Message], int] | None = None,
        workers: int = 0,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        configs = node_configs or [
            {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
        ]
        if len(configs) != num_nodes:
            raise ValueError(f"got {len(configs)} node configs for {num_nodes} nodes")
        rng = np.random.default_rng(seed)
        ids = [int(v) for v in rng.integers(1, 2**63 - 1, size=num_nodes, dtype=np.int64)]
        self.client_app = client_app
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config=dict(config),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node_id, config in zip(ids, configs, strict=True)
        }
        self._run = Run.create_empty(run_id=1)
        self._pending: dict[str, tuple[Message, int]] = {}
        self._delay = delay_pulls
        self.delivered: list[Message] = []
        self._executor = ThreadPoolExecutor(workers) if workers > 0 else None
        self._futures: dict[str, Future[Message]] = {}

    def set_run(self, run: Run) -> None:
        """Nothing to do: the run is local."""

    @property
    def run(self) -> Run:
        """A run record with id 1."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build an instruction message as the ServerApp's grid would."""
        metadata = Metadata(
            run_id=1,
            message_id="",
            src_node_id=0,
            dst_node_id=dst_node_id,
            reply_to_message_id="",
            group_id=group_id,
            created_at=now().timestamp(),
            ttl=ttl or DEFAULT_TTL,
            message_type=message_type,
        )
        return Message(metadata=metadata, content=content)

    def get_node_ids(self) -> list[int]:
        """The node ids, in partition order."""
        return list(self.contexts)

    def node_id_of(self, partition_id: int) -> int:
        """The node id whose node config has ``partition-id == partition_id``."""
        for node_id, context in self.contexts.items():
            if int(context.node_config.get("partition-id", -1)) == partition_id:
                return node_id
        raise ValueError(f"no node has partition-id {partition_id}")

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Accept messages; their replies are computed when first pulled."""
        ids = []
        for message in messages:
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"unknown destination node {message.metadata.dst_node_id}")
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
            if self._executor is not None:
                self._futures[message_id] = self._executor.submit(self._execute, message)
                continue
            delay = self._delay(message) if self._delay else 0
            self._pending[message_id] = (message, delay)
        return ids

    def _execute(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.client_app(message, context)
        except Exception as err:
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
            reply = Message(Error(code=CLIENT_APP_EXCEPTION, reason=reason), reply_to=message)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        self.delivered.append(message)
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies for ``message_ids`` that are available now; each is returned only once."""
        replies = []
        for message_id in message_ids:
            future = self._futures.get(message_id)
            if future is not None:
                if future.done():
                    replies.append(self._futures.pop(message_id).result())
                continue
            if message_id not in self._pending:
                continue
            message, delay = self._pending[message_id]
            if delay > 0:
                self._pending[message_id] = (message, delay - 1)
                continue
            del self._pending[message_id]
            replies.append(self._execute(message))
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push and pull until every reply arrived or ``timeout`` (seconds) passed."""
        ids = self.push_messages(messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        waiting = set(ids)
        while waiting:
            got = self.pull_messages([i for i in ids if i in waiting])  # in push order
            for reply in got:
                waiting.discard(reply.metadata.reply_to_message_id)
            replies.extend(got)
            if deadline is not None and time.monotonic() > deadline:
                break
            if waiting and self._executor is not None:
                time.sleep(0.01)
        return replies

    def shutdown(self) -> None:
        """Stop the worker threads (waits for running ClientApp calls)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
