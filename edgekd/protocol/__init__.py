"""The message formats between edgekd servers and clients: one module per method.

Clients and strategies never import each other; they meet only through Flower messages whose
content is described, and whose keys are defined, here and nowhere else:

- :mod:`edgekd.protocol.common`: record names and the ``query.whoami`` reply;
- :mod:`edgekd.protocol.cloned_distillation`: train/evaluate of cloned distillation (sync and
  async) and of Flower's FedAvg/FedProx on the edgekd client;
- :mod:`edgekd.protocol.fedmd`: FedMD's three custom actions and its setup rules;
- :mod:`edgekd.protocol.cloud_edge`: cloud-edge confidence offloading (``query.ce_offload``,
  ``query.ce_answer``);
- :mod:`edgekd.protocol.ktg`: the federated knowledge transfer graph (``query.ktg_logits``,
  ``train.ktg``, ``evaluate.ktg``);
- :mod:`edgekd.protocol.public`: the public-data pool FedMD and KTG share.
- :mod:`edgekd.protocol.prune_kt`: filter pruning + layer-wise transfer to edges that learn
  a new class (``train.pk_transfer``).

A new method adds one module here, imported by its strategy and its client handler.
"""

from __future__ import annotations

from edgekd.protocol.cloned_distillation import ENSEMBLE_KEYS, member_key
from edgekd.protocol.common import ARRAYS, CONFIG, METRICS, WHOAMI

__all__ = [
    "ARRAYS",
    "CONFIG",
    "ENSEMBLE_KEYS",
    "METRICS",
    "WHOAMI",
    "member_key",
]
