"""Every seed edgekd derives from the run's ``seed``, in one place.

Each random stream of an experiment (batch orders, augmentation, initialisations, label
noise) gets its own integer seed, derived from the run's ``seed`` and the stream's position
(round, partition, ensemble member). Deriving them here, by name, keeps two streams from
colliding by accident and keeps a run's numbers reproducible when code moves.

The formulas are those edgekd has always used, so results stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["STREAMS", "derive_seed"]

_PRIME_A = 7_919
_PRIME_B = 1_009
_PRIME_C = 1_000_003
_FEDMD_INIT = 1_000
_CLOUD_EDGE = 104_729
_KTG = 15_485_863
_PRUNE_KT = 224_737

STREAMS: dict[str, Callable[[int, int, int, int], int]] = {
    # cloned distillation: the seed an edge initialises a scratch model with, per round
    "edge-init": lambda seed, rnd, pid, member: seed * _PRIME_A + rnd,
    # cloned distillation: Phase-2 batch order, per round
    "distill": lambda seed, rnd, pid, member: seed * _PRIME_B + rnd,
    # cloned distillation: the augmented views of the core data (the distillation pool)
    "distill-pool": lambda seed, rnd, pid, member: seed + 17,
    # a client's local training, per round and partition (the member-0 batch order)
    "client-train": lambda seed, rnd, pid, member: seed * _PRIME_C + rnd * _PRIME_B + pid,
    # ensemble member ``member`` of a client's training (``seed`` = the client-train seed)
    "member": lambda seed, rnd, pid, member: seed + _PRIME_A * member,
    # the label-noise draws of a noisy edge (``seed`` = that training's seed)
    "label-noise": lambda seed, rnd, pid, member: seed + _PRIME_C,
    # FedMD: a client's transfer-learning stage (public then private data), per partition
    "fedmd-pretrain": lambda seed, rnd, pid, member: seed * _PRIME_C + pid,
    # FedMD: the draw of a client's private test set, per partition
    "fedmd-private-test": lambda seed, rnd, pid, member: seed * _PRIME_A + pid,
    # FedMD: a client's model initialisation, per partition
    "fedmd-init": lambda seed, rnd, pid, member: seed * _FEDMD_INIT + pid + 1,
    # FedMD: the one initialisation every client shares (the FedAvg baseline)
    "fedmd-shared-init": lambda seed, rnd, pid, member: seed * _FEDMD_INIT,
    # cloud-edge: the teacher's initialisation and batch order
    "ce-teacher": lambda seed, rnd, pid, member: seed * _PRIME_B + _CLOUD_EDGE,
    # cloud-edge: the student's initialisation
    "ce-student": lambda seed, rnd, pid, member: seed * _PRIME_A + _CLOUD_EDGE - 6,
    # cloud-edge: the student's distillation batch order
    "ce-distill": lambda seed, rnd, pid, member: seed * _PRIME_C + _CLOUD_EDGE - 12,
    # knowledge transfer graph: a node's model initialisation, per partition
    "ktg-init": lambda seed, rnd, pid, member: seed * _PRIME_A + _KTG + pid,
    # knowledge transfer graph: a node's public-batch order (``seed`` = its client-train seed)
    "ktg-public": lambda seed, rnd, pid, member: seed + _KTG,
    # cloud-edge: the validation part of the core split
    "ce-val": lambda seed, rnd, pid, member: seed + _CLOUD_EDGE - 18,
    # prune-kt: a model's initialisation (member 0: the teacher, 1: a student)
    "pk-init": lambda seed, rnd, pid, member: seed * _PRIME_A + _PRUNE_KT + member,
    # prune-kt: the teacher's batch order
    "pk-teacher": lambda seed, rnd, pid, member: seed * _PRIME_B + _PRUNE_KT,
    # prune-kt: a student's batch order (member = round(1000 P), its threshold)
    "pk-student": lambda seed, rnd, pid, member: seed * _PRIME_C + _PRUNE_KT + member,
    # prune-kt: the images of the activation statistics
    "pk-stats": lambda seed, rnd, pid, member: seed + _PRUNE_KT - 6,
    # prune-kt: an edge's data draw, classifier row and transfer batch order, per edge
    "pk-edge": lambda seed, rnd, pid, member: seed * _PRIME_A + _PRUNE_KT + 7 * pid + 11,
    # knowledge transfer graph: the batch order and augmentation of graph training
    "ktg-train": lambda seed, rnd, pid, member: seed * _PRIME_C + _KTG - 7,
    # knowledge transfer graph: a fixed node's pretraining (init and batch order) per node
    "ktg-teacher": lambda seed, rnd, pid, member: seed * _PRIME_B + _KTG - 13 - 101 * pid,
}


def derive_seed(
    stream: str, seed: int, *, server_round: int = 0, partition: int = 0, member: int = 0
) -> int:
    """The seed of random stream ``stream`` (a key of :data:`STREAMS`) for this position.

    >>> derive_seed("distill", 3, server_round=2)
    3029
    """
    try:
        formula = STREAMS[stream]
    except KeyError:
        raise ValueError(f"unknown seed stream {stream!r}; known: {sorted(STREAMS)}") from None
    return formula(seed, server_round, partition, member)
