"""Searching a knowledge transfer graph: node models and edge gates, by ASHA on Ray Tune.

Minami, Hirakawa, Yamashita and Fujiyoshi, "Knowledge Transfer Graph for Deep Collaborative
Learning" (ACCV 2020); official code https://github.com/somaminami/DCL (``train.py``: Optuna's
RandomSampler with a SuccessiveHalvingPruner, objective the *test* accuracy of node 0).

Here the objective is node 0's accuracy on a **validation split** carved out of the training
set (:func:`load_graph_data`); the test set is never seen by the search. The scheduler is Ray
Tune's ``ASHAScheduler(time_attr="training_iteration", max_t=R, grace_period=1,
reduction_factor=2)``; one training iteration (a rung's unit) is one epoch of the whole graph,
trained in the trial's Ray worker by :func:`edgekd.ktg.train_graph` (no Flower processes).

The search space (:class:`SearchSpace`) is, per trial, one model per node (node 0's model may be
pinned, as the paper pins its evaluation target) and one gate (Through, Cutoff, Linear, Correct)
per edge, self edges included. Configurations are drawn up front, by a seeded random draw that
keeps only **valid** graphs (:meth:`SearchSpace.sample`, without repeats), and handed to Tune
as a grid: the same random search as the paper's RandomSampler, readable and reproducible. A
graph is valid when :class:`~edgekd.losses.ktg.GateMatrix` accepts it (no node without a path)
and no node is fixed (all its incoming edges Cutoff): node 0 must learn, and a fixed node would
need a pretrained teacher per model and seed, which the search leaves out (a design decision;
:func:`edgekd.ktg.train_graph` and the reproduction still train graphs with fixed nodes).

Ray Tune is the optional ``edgekd[tune]`` extra: ``ray.tune`` is imported only inside the
functions that need it, so this module imports without it. Resuming: an interrupted search
is continued by :func:`run_search` with ``resume=True`` (``Tuner.restore``): finished and
stopped trials are kept, unfinished ones start again from their first epoch (trials do not
checkpoint; an epoch is short), and the ASHA rungs recorded so far are kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log
from torch import nn

from edgekd.datasets import core_split, default_padding, load_dataset, to_tensors
from edgekd.ktg import GraphEpoch, train_graph
from edgekd.losses.ktg import Gate, GateMatrix, GateMatrixError
from edgekd.models import build_model, list_models
from edgekd.seeds import derive_seed
from edgekd.training import evaluate, set_torch_threads

__all__ = [
    "DEFAULT_POOL",
    "METRIC",
    "GraphData",
    "SearchSpace",
    "TrainSettings",
    "asha_milestones",
    "build_graph_models",
    "graph_trainable",
    "load_graph_data",
    "node_test_accuracies",
    "pretrain_teacher",
    "run_search",
    "search_log",
    "train_config",
    "trial_dirname",
]

#: The metric a trial reports every epoch and ASHA maximises: node 0's validation accuracy.
METRIC = "val_accuracy"
#: The default pool of node models (small CIFAR networks a 2-core CPU can train).
DEFAULT_POOL: tuple[str, ...] = ("resnet8", "resnet20", "wrn16_2", "cnn")
_MAX_DRAWS = 10_000


@dataclass(frozen=True)
class SearchSpace:
    """What the search chooses: a model per node and a gate per edge.

    Attributes
    ----------
    num_nodes : int
        Nodes ``M`` of every graph (>= 2); node 0 is the evaluation target.
    model_pool : tuple[str, ...]
        Models the nodes draw from (names of :func:`edgekd.models.build_model`).
    target_model : str or None
        Node 0's model, fixed (the paper pins its target, ResNet32); ``None`` draws it from
        the pool like the others.
    gates : tuple[str, ...]
        Gate letters every edge draws from (``T``, ``X``, ``L``, ``C``; all by default).
    """

    num_nodes: int = 3
    model_pool: tuple[str, ...] = DEFAULT_POOL
    target_model: str | None = "resnet8"
    gates: tuple[str, ...] = tuple(g.value for g in Gate)

    def __post_init__(self) -> None:
        if self.num_nodes < 2:
            raise ValueError(f"a searched graph needs num_nodes >= 2, got {self.num_nodes}")
        known = set(list_models())
        for name in (*self.model_pool, *([self.target_model] if self.target_model else [])):
            if name not in known:
                raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(known))}")
        if not self.model_pool:
            raise ValueError("model_pool is empty")
        letters = {g.value for g in Gate}
        if not self.gates or not set(self.gates) <= letters:
            raise ValueError(f"gates must be letters of {sorted(letters)}, got {self.gates}")

    def is_valid(self, gates: GateMatrix) -> bool:
        """True when ``gates`` may be searched: ``M`` nodes and no fixed node (node 0 above all)."""
        return gates.num_nodes == self.num_nodes and not gates.fixed_nodes

    def sample(self, count: int, seed: int) -> list[dict[str, str]]:
        """``count`` distinct valid configurations ``{"gates": ..., "models": "a,b,c"}``.

        A seeded rejection draw: each edge's gate and each node's model uniformly at random,
        invalid matrices (:meth:`is_valid`, :class:`GateMatrixError`) and repeats discarded.
        Raises ``ValueError`` when the space cannot supply ``count`` of them.
        """
        rng = np.random.default_rng(seed)
        seen: set[tuple[str, str]] = set()
        configs = []
        for _ in range(_MAX_DRAWS):
            if len(configs) == count:
                break
            letters = rng.choice(list(self.gates), size=(self.num_nodes, self.num_nodes))
            text = ";".join(",".join(str(g) for g in row) for row in letters)
            try:
                matrix = GateMatrix.parse(text, self.num_nodes)
            except GateMatrixError:
                continue
            free = [str(m) for m in rng.choice(list(self.model_pool), size=self.num_nodes)]
            models = [self.target_model, *free[1:]] if self.target_model else free
            key = (str(matrix), ",".join(models))
            if self.is_valid(matrix) and key not in seen:
                seen.add(key)
                configs.append({"gates": key[0], "models": key[1]})
        if len(configs) < count:
            raise ValueError(f"the search space gave only {len(configs)} of {count} graphs")
        return configs


@dataclass(frozen=True)
class TrainSettings:
    """How every graph is trained (the same for every trial and for the reproduction).

    ``epochs`` is the most a trial trains (ASHA's ``max_t``); the schedule (cosine by default)
    always spans ``epochs``, so a trial stopped at a rung was trained as the first part of the
    full run, as in the official search (its pruner cuts the 200-epoch schedule short).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 1.0
    lr_schedule: str = "cosine"
    augment: bool = True
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True, eq=False)
class GraphData:
    """Normalised tensors of a train / validation / test split (``x_test`` never searched)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_channels: int
    padding: int
    description: dict[str, Any] = field(default_factory=dict)


def load_graph_data(
    npz_path: str | Path | None = None,
    *,
    dataset: str = "npz",
    val_fraction: float = 0.2,
    split_seed: int = 0,
) -> GraphData:
    """The training set split (stratified, seeded) into train and validation, and the test set.

    Parameters
    ----------
    npz_path : str or Path, optional
        The archive for ``dataset="npz"`` (e.g. ``../shared/data/cifar10_head.npz``).
    dataset : str
        A name of :func:`edgekd.datasets.load_dataset`.
    val_fraction : float
        Share of the training set held out, per class, as the validation split.
    split_seed : int
        Seed of the split (the same for every trial and every reproduction seed).
    """
    bundle = load_dataset(dataset, npz_path=npz_path)
    val_idx, train_idx = core_split(bundle.y_train, val_fraction, split_seed)
    if len(val_idx) == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves an empty validation split")

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(x, y, bundle.mean, bundle.std)

    x_tr, y_tr = tensors(bundle.x_train[train_idx], bundle.y_train[train_idx])
    x_val, y_val = tensors(bundle.x_train[val_idx], bundle.y_train[val_idx])
    x_te, y_te = tensors(bundle.x_test, bundle.y_test)
    description = {
        "dataset": bundle.name,
        "train": len(y_tr),
        "val": len(y_val),
        "test": len(y_te),
        "val_fraction": val_fraction,
        "split_seed": split_seed,
    }
    return GraphData(
        x_tr,
        y_tr,
        x_val,
        y_val,
        x_te,
        y_te,
        bundle.num_classes,
        bundle.in_channels,
        default_padding(bundle.image_size),
        description,
    )


def build_graph_models(
    models: Sequence[str], seed: int, num_classes: int, in_channels: int
) -> list[nn.Module]:
    """One model per node, node ``i`` initialised from ``derive_seed("ktg-init", seed, i)``.

    Node ``i``'s initialisation depends only on its index, its model and ``seed``, so node 0
    starts from the same weights in every graph of a seed (paired comparisons).
    """
    built = []
    for node, name in enumerate(models):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("ktg-init", seed, partition=node))
            built.append(build_model(name, num_classes, in_channels))
    return built


def _train_kwargs(settings: TrainSettings, data: GraphData, epochs: int | None) -> dict[str, Any]:
    return {
        "epochs": settings.epochs if epochs is None else epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "momentum": settings.momentum,
        "weight_decay": settings.weight_decay,
        "temperature": settings.temperature,
        "augment": settings.augment,
        "lr_schedule": settings.lr_schedule,
        "x_val": data.x_val,
        "y_val": data.y_val,
    }


def pretrain_teacher(
    name: str, node: int, data: GraphData, settings: TrainSettings
) -> tuple[dict[str, torch.Tensor], float]:
    """Train model ``name`` alone (cross-entropy) as the pretrained weights of fixed ``node``.

    Its initialisation and batch order come from ``derive_seed("ktg-teacher", settings.seed,
    partition=node)``, so a teacher never replays the trajectory of a learning node. Returns
    the state dict and the teacher's last validation accuracy.
    """
    seed = derive_seed("ktg-teacher", settings.seed, partition=node)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, data.num_classes, data.in_channels)
    history = train_graph(
        [model],
        data.x_train,
        data.y_train,
        GateMatrix.parse("T"),
        **_train_kwargs(settings, data, None),
        seed=seed,
        progress=f"teacher {name} (node {node})",
    )
    val = history[-1].val_accuracy if history else None
    return model.state_dict(), float(val[0]) if val else float("nan")


def train_config(
    config: dict[str, str],
    data: GraphData,
    settings: TrainSettings,
    *,
    epochs: int | None = None,
    on_epoch: Callable[[int, GraphEpoch], None] | None = None,
    pretrained: dict[int, dict[str, torch.Tensor]] | None = None,
) -> tuple[list[nn.Module], list[GraphEpoch]]:
    """Build and train the graph ``config`` (``gates``, ``models``) on ``data``'s train split.

    ``pretrained`` holds the state dicts of fixed nodes (required for each one). Returns the
    trained models and the per-epoch history (validation accuracies on ``data``'s val split).
    """
    names = config["models"].split(",")
    gates = GateMatrix.parse(config["gates"], len(names))
    missing = sorted(set(gates.fixed_nodes) - set(pretrained or {}))
    if missing:
        raise ValueError(f"fixed node(s) {missing} of {config['gates']!r} need pretrained weights")
    models = build_graph_models(names, settings.seed, data.num_classes, data.in_channels)
    for node, state in (pretrained or {}).items():
        models[node].load_state_dict(state)
    history = train_graph(
        models,
        data.x_train,
        data.y_train,
        gates,
        **_train_kwargs(settings, data, epochs),
        seed=derive_seed("ktg-train", settings.seed),
        progress=f"graph {config['gates']} [{config['models']}]",
        on_epoch=on_epoch,
    )
    return models, history


def graph_trainable(config: dict[str, Any], data: GraphData, settings: TrainSettings) -> None:
    """Ray Tune function trainable: train ``config["graph"]``, report every epoch.

    Reports :data:`METRIC` (node 0's validation accuracy) plus every node's validation and
    training accuracy after each epoch; ASHA stops the trial between epochs.
    """
    from ray import tune

    set_torch_threads(settings.threads)
    graph = config["graph"]

    def report(epoch: int, record: GraphEpoch) -> None:
        val = record.val_accuracy or ()
        tune.report(
            {
                METRIC: val[0],
                "epoch": epoch,
                "val_accuracy_nodes": list(val),
                "train_accuracy_nodes": list(record.train_accuracy),
                "train_loss_nodes": list(record.train_loss),
            }
        )

    train_config(graph, data, settings, on_epoch=report)


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default spells the whole config)."""
    return f"trial_{trial.trial_id}"


def asha_milestones(max_t: int, grace_period: int = 1, reduction_factor: int = 2) -> list[int]:
    """The rungs of ``ASHAScheduler`` (epochs where it may stop a trial), ascending, below
    ``max_t``: ``grace_period * reduction_factor ** k``."""
    rungs, t = [], grace_period
    while t < max_t:
        rungs.append(t)
        t *= reduction_factor
    return rungs


def _trainable(data: GraphData, settings: TrainSettings, cpus: float) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(graph_trainable, data=data, settings=settings), {"cpu": cpus}
    )


def run_search(
    space: SearchSpace,
    data: GraphData,
    settings: TrainSettings,
    *,
    num_trials: int,
    storage: str | Path,
    name: str = "ktg-search",
    seed: int = 0,
    workers: int = 2,
    grace_period: int = 1,
    reduction_factor: int = 2,
    resume: bool = True,
) -> Any:
    """Run (or, with ``resume`` and an experiment at ``storage/name``, continue) the search.

    ``workers`` trials train side by side, one CPU (and ``settings.threads`` torch threads)
    each; Ray must be initialised by the caller (``ray.init(num_cpus=workers)``). Returns
    Tune's ``ResultGrid``; :func:`search_log` turns it into JSON.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    path = Path(storage).expanduser().resolve() / name
    trainable = _trainable(data, settings, 1.0)
    if resume and tune.Tuner.can_restore(str(path)):
        log(INFO, "ktg search: resuming %s", path)
        return tune.Tuner.restore(str(path), trainable, resume_errored=True).fit()
    configs = space.sample(num_trials, seed)
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=settings.epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"graph": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=scheduler,
            num_samples=1,
            max_concurrent_trials=workers,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(path.parent), verbose=1),
    )
    log(INFO, "ktg search: %d trials, %d at a time, into %s", num_trials, workers, path)
    return tuner.fit()


def _trial_entry(result: Any, rungs: list[int], max_t: int) -> dict[str, Any]:
    frame = result.metrics_dataframe
    curve = [] if frame is None or METRIC not in frame else [float(v) for v in frame[METRIC]]
    epochs = len(curve)
    reached = [r for r in rungs if epochs >= r]
    if result.error is not None:
        status = "error"
    elif epochs >= max_t:
        status = "completed"
    else:
        status = f"stopped at epoch {epochs}"
    return {
        "trial_id": (result.metrics or {}).get("trial_id"),
        "gates": result.config["graph"]["gates"],
        "models": result.config["graph"]["models"].split(","),
        "epochs": epochs,
        "rungs_reached": reached,
        "promoted_past": [r for r in reached if epochs > r],
        "status": status,
        "val_accuracy": curve[-1] if curve else None,
        "val_curve": curve,
        "seconds": (result.metrics or {}).get("time_total_s"),
        "error": None if result.error is None else str(result.error).splitlines()[0][:300],
    }


def search_log(
    results: Any,
    settings: TrainSettings,
    *,
    grace_period: int = 1,
    reduction_factor: int = 2,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every trial of a finished search, its rungs and status, and the best graph (JSON-ready).

    The best graph is the trial with the highest last validation accuracy among those that
    trained longest (successive halving's survivors; normally ``max_t`` epochs): a trial
    stopped early is never preferred to one that reached the top rung.
    """
    rungs = asha_milestones(settings.epochs, grace_period, reduction_factor)
    trials = [_trial_entry(r, rungs, settings.epochs) for r in results]
    trials.sort(key=lambda t: str(t["trial_id"]))
    scored = [t for t in trials if t["val_accuracy"] is not None]
    if not scored:
        raise ValueError("no trial reported a validation accuracy")
    longest = max(t["epochs"] for t in scored)
    best = max((t for t in scored if t["epochs"] == longest), key=lambda t: t["val_accuracy"])
    per_rung = {
        str(r): {
            "reached": sum(r in t["rungs_reached"] for t in trials),
            "promoted": sum(r in t["promoted_past"] for t in trials),
        }
        for r in rungs
    }
    return {
        "trials": len(trials),
        "metric": f"{METRIC} (node 0, validation split; never the test set)",
        "scheduler": {
            "name": "ASHAScheduler",
            "time_attr": "training_iteration (one epoch)",
            "max_t": settings.epochs,
            "grace_period": grace_period,
            "reduction_factor": reduction_factor,
            "rungs": per_rung,
        },
        "best": {k: best[k] for k in ("trial_id", "gates", "models", "epochs", "val_accuracy")},
        "gates": best["gates"],
        "models": best["models"],
        "epochs_trained": sum(t["epochs"] for t in trials),
        "mean_val_accuracy_completed": _mean(
            [t["val_accuracy"] for t in scored if t["status"] == "completed"]
        ),
        "settings": asdict(settings),
        **(extra or {}),
        "trial_log": trials,
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def node_test_accuracies(models: Sequence[nn.Module], data: GraphData) -> list[float]:
    """Every node's accuracy on ``data``'s test split (for reports, never for the search)."""
    return [evaluate(m, data.x_test, data.y_test).accuracy for m in models]
