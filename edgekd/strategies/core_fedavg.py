"""FedAvg from the Phase-0 core, one edge per round: the averaging reference of cloned distillation.

Paper of the method it is a reference for: "Asynchronous Edge Learning using Cloned Knowledge
Distillation", https://openreview.net/forum?id=MqWHrrIfBMN. FedAvg: McMahan et al. 2017,
https://arxiv.org/abs/1602.05629.

A FedAvg reference that starts from a random model and never sees the core data answers another
question than cloned distillation does. This one gets everything the distillation variants get:
it starts from the same Phase-0 core (same seed, same cache entry), meets the same edge in every
round (one transfer each way, like CPP), and treats the server's core data as one more client.
Each round the edge trains a clone of the core on its data (exactly as for CPP: same message,
same seeds), the server trains another clone on the core data with the same local schedule
(``local-epochs``, ``lr``, ``lr-schedule``, ``batch-size``), and the new core is the two models'
average weighted by their numbers of examples (Flower's ``aggregate_arrayrecords``, as in
``FedAvg``). Only averaging replaces Phase 2's distillation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from edgekd.seeds import derive_seed
from edgekd.strategies.cloned_distillation import ClonedDistillation, ClonedDistillationConfig
from edgekd.strategies.common import reply_metrics
from edgekd.strategies.registry import StrategyContext, register_strategy
from edgekd.training import evaluate, train_supervised

__all__ = ["CoreFedAvg"]

WEIGHT_KEY = "num-examples"


class CoreFedAvg(ClonedDistillation):
    """Cloned distillation's schedule with FedAvg (core data as a client) instead of Phase 2.

    Parameters are those of :class:`ClonedDistillation`; the ``cd-*`` settings that matter are
    the Phase-0 ones (``cd-core-epochs``, ``cd-core-lr``), ``cd-edge-order`` and
    ``cd-round-timeout``. Edges start as clones of the core, one model each, no memory.
    """

    strategy_name = "core-fedavg"

    def _use_reply(self, server_round: int, edge: int, reply: Message) -> dict[str, Any]:
        """Average the edge's model with a core-data-trained clone of the core."""
        try:
            (edge_model,) = self._teachers_from_reply(reply)
        except ValueError as err:
            return {"edge-status": f"rejected: {err}"}
        edge_examples = int(reply_metrics(reply).get("num-examples", 0))
        if edge_examples <= 0:
            return {"edge-status": f"rejected: num-examples {edge_examples} is not positive"}
        before = evaluate(self.model, self.test.x, self.test.y).accuracy
        edge_acc = evaluate(edge_model, self.test.x, self.test.y).accuracy
        core_client = copy.deepcopy(self.model)
        core_result = train_supervised(
            core_client,
            self.core.x,
            self.core.y,
            epochs=self.config.local_epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            seed=derive_seed(
                "client-train",
                self.config.seed,
                server_round=server_round,
                partition=self.config.num_partitions,
            ),
            augment=self.config.augment,
            padding=self.core.padding,
            flip=self._flip,
            lr_schedule=self.config.lr_schedule,
            progress=f"core-fedavg: core client training (round {server_round})",
        )
        averaged = average_states(
            [(edge_model.state_dict(), edge_examples), (core_client.state_dict(), len(self.core))]
        )
        self.model.load_state_dict(averaged.to_torch_state_dict(), strict=True)
        after = evaluate(self.model, self.test.x, self.test.y).accuracy
        return {
            "edge-status": "ok",
            "edge-num-examples": edge_examples,
            "core-acc-before": before,
            "core-acc-after": after,
            "core-train-acc": core_result.accuracy,
            "teacher-acc-mean": edge_acc,
            "teacher-accs": [edge_acc],
            "num-teachers": 0,
        }


def average_states(states: Sequence[tuple[Mapping[str, Any], int]]) -> ArrayRecord:
    """Weighted average of ``(state dict, num_examples)`` pairs, as Flower's FedAvg does it."""
    records = [
        RecordDict({"arrays": ArrayRecord(dict(state)), "metrics": MetricRecord({WEIGHT_KEY: n})})
        for state, n in states
    ]
    return aggregate_arrayrecords(records, WEIGHT_KEY)


@register_strategy("core-fedavg", sections={"cd-": ClonedDistillationConfig})
def build_core_fedavg(context: StrategyContext) -> CoreFedAvg:
    """Factory for ``strategy = "core-fedavg"`` (edges as in CPP; Phase-0 keys ``cd-core-*``)."""
    run_config = {**context.run_config, "cd-variant": "CPP", "cd-edge-init": ""}
    return CoreFedAvg(context.config, ClonedDistillationConfig.from_run_config(run_config))
