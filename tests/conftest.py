"""Shared fixtures: tiny real datasets written by the tests themselves."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A 4-class 8x8 RGB npz with learnable structure (class = brightest quadrant)."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, size=n)
        x = rng.integers(0, 60, size=(n, 8, 8, 3)).astype(np.uint8)
        for i, label in enumerate(y):
            r, c = divmod(int(label), 2)
            x[i, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4, :] += 180
        return x, y.astype(np.int64)

    x_train, y_train = make(160)
    x_test, y_test = make(40)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(autouse=True)
def flower_task_identity() -> object:
    """Give this process the task identity a ServerApp process has, so Messages can be built.

    Flower sets it when it starts a ServerApp; tests that build instruction messages (as a
    strategy does) need the same.
    """
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield TaskIdentity
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run torch on one thread (tiny models gain nothing from more; less contention).

    ``OMP_NUM_THREADS=1`` too: the runner and the ClientApp size their threads from it.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PLAIN_CLIENT = Path(__file__).resolve().parent / "apps" / "plain_flower_client.py"


@pytest.fixture
def plain_client_app() -> object:
    """The Flower-only ClientApp of ``tests/apps/plain_flower_client.py`` (a fresh import)."""
    spec = importlib.util.spec_from_file_location("plain_flower_client", PLAIN_CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app
