"""Cloned distillation's memory of edge teachers, and the detection of corrupted edges.

Phase 2 keeps, for each of the last M returned edges (``cd-memory-size``), the logits of its
teachers on the distillation pool (its weights only for a feature term such as NMD: with KL,
distillation cost does not grow with M). Before an edge enters the memory it can be scored
on the server's core data (``cd-detect-policy``): a *suspect* edge is flagged, down-weighted
or rejected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log

from edgekd.experiment import TensorData
from edgekd.models import EdgeKDModel
from edgekd.strategies.cloned_distillation_config import ClonedDistillationConfig
from edgekd.training import evaluate, predict_logits

__all__ = ["EdgeTeacher", "TeacherMemory", "TeacherOutputs", "judge_edge"]


def judge_edge(
    score: float,
    accepted_scores: Sequence[float],
    fallback: float | Callable[[], float],
    threshold: float,
) -> tuple[float, bool]:
    """The detection rule: ``(reference, suspect)`` for an edge scoring ``score``.

    The reference is the median of the previously accepted edges' scores; before any edge is
    accepted it is ``fallback`` (the core model's own score; a callable is only evaluated
    then). The edge is suspect when ``score < threshold * reference``. The detector
    (:meth:`TeacherMemory.detect`) and offline replays of it (``scripts/calibrate_noisy.py``)
    share this function.
    """
    if accepted_scores:
        reference = float(np.median(accepted_scores))
    else:
        reference = float(fallback() if callable(fallback) else fallback)
    return reference, score < threshold * reference


@dataclass
class EdgeTeacher:
    """What the core keeps of one returned edge: its logits on the pool and, only when Phase 2
    needs the teachers' features (``cd-distill-loss = "nmd"``), its models' weights."""

    server_round: int
    partition_id: int
    pool_logits: torch.Tensor  # (teachers_per_edge, V*n, C)
    test_accuracies: list[float]
    weight: float = 1.0
    staleness: int = 0
    model_states: list[dict[str, torch.Tensor]] = field(default_factory=list)


@dataclass
class TeacherOutputs:
    """A returned edge's teachers evaluated once: test logits and pool logits."""

    test_logits: torch.Tensor  # (teachers, n_test, C)
    pool_logits: torch.Tensor  # (teachers, V*n, C)

    @property
    def finite(self) -> bool:
        """No NaN/inf in either."""
        return bool(
            torch.isfinite(self.test_logits).all() and torch.isfinite(self.pool_logits).all()
        )


class TeacherMemory:
    """The last ``cd-memory-size`` edges' teachers and the scores of the accepted edges.

    Parameters
    ----------
    cd : ClonedDistillationConfig
        Memory size, ensemble mode and the detection settings.
    core, test : TensorData
        The server's core data (detection scores) and the test split (teacher accuracies).
    """

    def __init__(self, cd: ClonedDistillationConfig, core: TensorData, test: TensorData) -> None:
        self.cd = cd
        self.core = core
        self.test = test
        self.entries: deque[EdgeTeacher] = deque(maxlen=cd.memory_size)
        self.accepted_scores: list[float] = []

    def detect(
        self, core_model: torch.nn.Module, teachers: list[EdgeKDModel]
    ) -> tuple[float, float, bool]:
        """Score a returned edge on the core data: (score, reference, suspect).

        The score is the accuracy of the edge's mean prediction on the server's core data;
        the reference the median of the accepted edges' scores (before any, the core model's
        own accuracy on the core data).
        """
        logits = torch.stack([predict_logits(t, self.core.x) for t in teachers]).mean(0)
        score = float((logits.argmax(1) == self.core.y).float().mean())
        reference, suspect = judge_edge(
            score,
            self.accepted_scores,
            lambda: evaluate(core_model, self.core.x, self.core.y).accuracy,
            self.cd.detect_threshold,
        )
        return score, reference, suspect

    def screen(
        self, server_round: int, edge: int, core_model: torch.nn.Module, teachers: list[EdgeKDModel]
    ) -> dict[str, Any]:
        """Detect: the edge's scores; a suspect gets ``edge-status`` (reject) or a
        ``weight-factor`` (downweight); an accepted edge's score is remembered."""
        score, reference, suspect = self.detect(core_model, teachers)
        found: dict[str, Any] = {
            "detect-score": score,
            "detect-reference": reference,
            "suspect": int(suspect),
        }
        if not suspect:
            self.accepted_scores.append(score)
            return found
        log(
            WARNING,
            "cloned-distillation: round %s edge %s is suspect: core-data acc %.4f < %.2f x "
            "reference %.4f (policy %s)",
            server_round,
            edge,
            score,
            self.cd.detect_threshold,
            reference,
            self.cd.detect_policy,
        )
        if self.cd.detect_policy == "reject":
            found["edge-status"] = "rejected: suspect"
        elif self.cd.detect_policy == "exclude":
            found["exclude"] = True
        elif self.cd.detect_policy == "downweight":
            found["weight-factor"] = self.cd.detect_downweight
        return found

    def remember(
        self,
        server_round: int,
        edge: int,
        outputs: TeacherOutputs,
        weight: float,
        staleness: int,
        models: Sequence[torch.nn.Module] = (),
    ) -> list[float]:
        """Remember: store the edge's pool logits (their mean in "average" mode) and the
        ``models``' weights, if given; return its teachers' test accuracies."""
        teacher_accs = self.test_accuracies(outputs)
        logits = outputs.pool_logits
        if self.cd.ensemble_mode == "average":
            logits = logits.mean(0, keepdim=True)
        self.entries.append(
            EdgeTeacher(
                server_round,
                edge,
                logits,
                teacher_accs,
                weight,
                staleness,
                [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models],
            )
        )
        return teacher_accs

    def test_accuracies(self, outputs: TeacherOutputs) -> list[float]:
        """Each teacher's test accuracy."""
        return [float((lg.argmax(1) == self.test.y).float().mean()) for lg in outputs.test_logits]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every remembered teacher's pool logits, and each teacher's weight."""
        logits = torch.cat([entry.pool_logits for entry in self.entries])
        weights = torch.cat([torch.full((len(e.pool_logits),), e.weight) for e in self.entries])
        return logits, weights

    def feature_states(self) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
        """Every remembered model's weights and its weight in the feature term: the edge's
        weight, shared equally by its models in "average" mode (one teacher per edge)."""
        states: list[dict[str, torch.Tensor]] = []
        weights: list[float] = []
        for entry in self.entries:
            count = len(entry.model_states)
            share = 1.0 / count if count and self.cd.ensemble_mode == "average" else 1.0
            states.extend(entry.model_states)
            weights.extend([entry.weight * share] * len(entry.model_states))
        return states, weights
