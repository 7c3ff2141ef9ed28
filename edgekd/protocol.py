"""The message format between edgekd servers and clients, documented in one place.

Clients and strategies never import each other; they meet only through Flower messages whose
content is described here.

Train request (``MessageType.TRAIN``), as sent by FedAvg/FedProx and edgekd strategies:

- ``content["arrays"]``: :class:`flwr.app.ArrayRecord`, the model's ``state_dict``.
- ``content["config"]``: :class:`flwr.app.ConfigRecord`; every key is optional and falls back
  to the run config: ``server-round``, ``local-epochs``, ``batch-size``, ``lr``,
  ``lr-schedule``, ``momentum``, ``weight-decay``, ``proximal-mu`` (FedProx), ``seed``, plus the
  keys of
  :data:`ENSEMBLE_KEYS` for ensemble-training strategies.

Train reply:

- ``content["arrays"]``: the trained model (the first ensemble member when ``ensemble-size``
  > 1); members ``1..P-1`` follow as ``content["arrays-1"]``, ``content["arrays-2"]``, ...
  (:func:`member_key`), so Flower's FedAvg, which reads exactly one ArrayRecord, still works
  with ``ensemble-size`` 1.
- ``content["metrics"]``: :class:`flwr.app.MetricRecord` with ``num-examples``,
  ``train-loss``, ``train-acc``, ``partition-id`` and ``ensemble-size``.

Evaluate request/reply: the same ``arrays``/``config`` in; ``metrics`` with ``num-examples``,
``eval-loss``, ``eval-acc`` and ``partition-id`` out: the received model's accuracy on the
node's own data (the paper's "core accuracy on edge data", Fig. 9).

Query ``"query.whoami"``: no content needed; the reply's ``metrics`` holds ``partition-id``,
``num-partitions`` and ``num-examples``, so a server can map partitions to node ids.

FedMD messages (``strategy = "fedmd"``, full format in :mod:`edgekd.strategies.fedmd`): three
custom actions, ``"query.fedmd_scores"``, ``"train.fedmd"`` and ``"evaluate.fedmd"``. Each
carries a ``config`` record with every FedMD setting the client needs (the server parses the
``fedmd-*`` run-config keys once). Public data travels as row indices (``fedmd-public``
ArrayRecord, ``indices``); clients answer with ``fedmd-scores`` (``logits`` (N, C) and, for
LKD, ``representations`` (N, r)); the server sends the consensus back as ``fedmd-consensus``
(``indices``, ``logits``, ``representations``). Client models stay in
``context.state["fedmd-model"]`` and never travel, except in the ``FedAvg`` baseline
(``arrays``). Evaluate replies hold ``uniform-acc``, ``private-acc`` and ``partition-id``.
"""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "CONFIG",
    "ENSEMBLE_KEYS",
    "METRICS",
    "WHOAMI",
    "member_key",
]

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
WHOAMI = "whoami"
ENSEMBLE_KEYS = ("ensemble-size", "init", "init-seed")


def member_key(index: int) -> str:
    """Content key of ensemble member ``index`` in a train reply (``0`` is ``"arrays"``)."""
    if index < 0:
        raise ValueError(f"ensemble member index must be >= 0, got {index}")
    return ARRAYS if index == 0 else f"{ARRAYS}-{index}"
