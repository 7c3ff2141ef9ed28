"""Tests for edgekd.strategies.teacher_memory: the detection rule and the teachers' feature
weights."""

from __future__ import annotations

import pytest
import torch

from edgekd.experiment import TensorData
from edgekd.models import build_model
from edgekd.strategies.cloned_distillation_config import ClonedDistillationConfig
from edgekd.strategies.teacher_memory import TeacherMemory, TeacherOutputs, judge_edge


def _never() -> float:
    raise AssertionError("the fallback must not be evaluated once an edge was accepted")


def test_judge_edge_reference_is_the_median_of_the_accepted_scores() -> None:
    """Accepted 0.9, 0.5, 0.7: reference 0.7; at threshold 0.8 the bar is 0.56.

    Assert: 0.55 is suspect, 0.57 is not, both with reference 0.7; the fallback is not called.
    """
    assert judge_edge(0.55, [0.9, 0.5, 0.7], _never, 0.8) == (pytest.approx(0.7), True)
    assert judge_edge(0.57, [0.9, 0.5, 0.7], _never, 0.8) == (pytest.approx(0.7), False)
    # an even count: the median is the mean of the two middle scores, (0.5 + 0.7) / 2
    assert judge_edge(0.47, [0.9, 0.5, 0.7, 0.4], _never, 0.8) == (pytest.approx(0.6), True)


def test_judge_edge_falls_back_before_any_edge_is_accepted() -> None:
    """No accepted edge: the reference is the fallback, given as a number or a callable."""
    assert judge_edge(0.3, [], 0.5, 0.8) == (0.5, True)
    assert judge_edge(0.45, [], lambda: 0.5, 0.8) == (0.5, False)


@pytest.mark.parametrize(("mode", "expected"), [("members", [2.0, 2.0]), ("average", [1.0, 1.0])])
def test_feature_states_weight_each_model_by_its_edge(mode: str, expected: list[float]) -> None:
    """An edge of weight 2 with two models: each model weighs 2 ("members", two teachers) or
    1 ("average", one teacher shared by its models); an edge stored without models adds none.
    """
    cd = ClonedDistillationConfig(ensemble_size=2, memory_size=3, ensemble_mode=mode)
    data = TensorData(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), 0)
    memory = TeacherMemory(cd, data, data)
    models = [build_model("resnet8", num_classes=4) for _ in range(2)]
    outputs = TeacherOutputs(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
    memory.remember(1, 0, outputs, 2.0, 0, models=models)
    memory.remember(2, 1, outputs, 1.0, 0)
    states, weights = memory.feature_states()
    assert weights == expected
    assert len(states) == 2
    assert all(torch.equal(states[0][k], v) for k, v in models[0].state_dict().items())
