"""Message format of cloned distillation (synchronous and asynchronous) and of FedAvg/FedProx.

Train request (``MessageType.TRAIN``), as sent by FedAvg/FedProx and edgekd strategies:

- ``content["arrays"]``: :class:`flwr.app.ArrayRecord`, the model's ``state_dict``.
- ``content["config"]``: :class:`flwr.app.ConfigRecord`; every key is optional and falls back
  to the run config: ``server-round``, ``local-epochs``, ``batch-size``, ``lr``,
  ``lr-schedule``, ``momentum``, ``weight-decay``, ``proximal-mu`` (FedProx), ``seed``, plus the
  keys of :data:`ENSEMBLE_KEYS` for ensemble-training strategies: ``ensemble-size`` (P models
  per edge, one per batch order, default 1), ``init`` (``"received"``: start from the sent
  arrays; ``"scratch"``: a fresh model seeded ``init-seed + member``) and ``init-seed``.

Train reply:

- ``content["arrays"]``: the trained model (the first ensemble member when ``ensemble-size``
  > 1); members ``1..P-1`` follow as ``content["arrays-1"]``, ``content["arrays-2"]``, ...
  (:func:`member_key`), so Flower's FedAvg, which reads exactly one ArrayRecord, still works
  with ``ensemble-size`` 1.
- ``content["metrics"]``: :class:`flwr.app.MetricRecord` with ``num-examples``,
  ``train-loss``, ``train-acc`` (means over the members), ``partition-id``,
  ``ensemble-size``, and the simulated-edge markers ``simulated-noisy`` (1 when the run
  config's simulated noisy edges include this partition, whose labels were then corrupted,
  else 0) and ``simulated-delay-s`` (the seconds the node waited before replying to simulate
  a lagging edge; 0.0 for none). The asynchronous strategy reads both to report which edges
  were noisy or late.

The plain form (any Flower ClientApp): a reply whose metrics have no ``ensemble-size`` is
one model, whatever ``ensemble-size`` was asked: exactly one ArrayRecord (``"arrays"`` by
convention; Flower's FedAvg reads it under any name) with the state dict of the received
model, and a
MetricRecord (``"metrics"`` by convention) with ``num-examples``; every other key is optional.
Cloned distillation uses it as one teacher (M and the memory as usual), ``core-fedavg`` as
the edge's model. A reply with an error, without arrays, with other array names or shapes
than the sent model, or with NaN/inf values is refused with that reason in the round's
report (``edge-status``).

Evaluate request/reply: the same ``arrays``/``config`` in; ``metrics`` with ``num-examples``,
``eval-loss``, ``eval-acc`` and ``partition-id`` out: the received model's accuracy on the
node's own data (the paper's "core accuracy on edge data", Fig. 9).

An edgekd node also answers ``query.whoami`` (:mod:`edgekd.protocol.common`); a node that
does not is still an edge (ordered after those that answer, by node id).
"""

from __future__ import annotations

from edgekd.protocol.common import ARRAYS

__all__ = [
    "ENSEMBLE_KEYS",
    "ENSEMBLE_SIZE",
    "EVAL_ACC",
    "EVAL_LOSS",
    "INIT",
    "INIT_SEED",
    "SIMULATED_DELAY_S",
    "SIMULATED_NOISY",
    "TRAIN_ACC",
    "TRAIN_LOSS",
    "member_key",
]

ENSEMBLE_SIZE = "ensemble-size"
INIT = "init"
INIT_SEED = "init-seed"
ENSEMBLE_KEYS = (ENSEMBLE_SIZE, INIT, INIT_SEED)
TRAIN_LOSS = "train-loss"
TRAIN_ACC = "train-acc"
EVAL_LOSS = "eval-loss"
EVAL_ACC = "eval-acc"
SIMULATED_NOISY = "simulated-noisy"
SIMULATED_DELAY_S = "simulated-delay-s"


def member_key(index: int) -> str:
    """Content key of ensemble member ``index`` in a train reply (``0`` is ``"arrays"``)."""
    if index < 0:
        raise ValueError(f"ensemble member index must be >= 0, got {index}")
    return ARRAYS if index == 0 else f"{ARRAYS}-{index}"
