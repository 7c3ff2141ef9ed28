"""The edgekd ClientApp: one edge device / federated client.

One ``ClientApp`` for every method; each method's handlers live in their own module and
register here:

- :mod:`edgekd.clients.node`: ``query.whoami`` (and the node's identity and data);
- :mod:`edgekd.clients.cloned_distillation`: ``train`` and ``evaluate`` (cloned distillation,
  FedAvg, FedProx);
- :mod:`edgekd.clients.fedmd`: ``query.fedmd_scores``, ``train.fedmd``, ``evaluate.fedmd``;
- :mod:`edgekd.clients.cloud_edge`: ``query.ce_offload``, ``query.ce_answer`` (cloud-edge
  confidence offloading);
- :mod:`edgekd.clients.ktg`: ``query.ktg_logits``, ``train.ktg``, ``evaluate.ktg`` (federated
  knowledge transfer graph).
- :mod:`edgekd.clients.prune_kt`: ``train.pk_transfer`` (filter pruning + layer-wise transfer
  of a new class).

The same app runs under the simulation engine and on a real ``flower-supernode``; the message
formats are in :mod:`edgekd.protocol`. A new method adds a handler module with a
``register(app)`` and one line below.
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from edgekd.clients import cloned_distillation, cloud_edge, fedmd, ktg, node, prune_kt
from edgekd.clients.cloned_distillation import LocalTrainConfig, evaluate, train, train_local
from edgekd.clients.node import (
    NODE_DATA_KEY,
    NodeDataError,
    model_for_arrays,
    node_data,
    node_partition,
    whoami,
)

__all__ = [
    "NODE_DATA_KEY",
    "LocalTrainConfig",
    "NodeDataError",
    "app",
    "evaluate",
    "model_for_arrays",
    "node_data",
    "node_partition",
    "train",
    "train_local",
    "whoami",
]

app = ClientApp()
node.register(app)
cloned_distillation.register(app)
fedmd.register(app)
cloud_edge.register(app)
ktg.register(app)
prune_kt.register(app)
