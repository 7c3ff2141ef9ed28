"""Edge handler of filter pruning + layer-wise knowledge transfer: learn a new class on device.

Paper: K. Zhao, Y. Chen and M. Zhao, "Enabling Deep Learning on Edge Devices through Filter
Pruning and Knowledge Transfer", 2022, https://arxiv.org/abs/2201.10947 (section 4.1).

``train.pk_transfer`` rebuilds the received compressed student and the teacher from the
architectures in the message, appends one output for this edge's new class, and trains the
student on the edge's data (its new class and ``old-fraction`` of its old-class images,
:mod:`edgekd.datasets.incremental`) by layer-wise transfer
(:func:`edgekd.prune_kt_training.transfer`); with ``baseline`` it also fine-tunes a copy without
the teacher terms. It reports old- and new-class test accuracy before, after, and without KT.
A node with its own npz (node config ``npz-path``) uses that file's train and test splits.
Message format: :mod:`edgekd.protocol.prune_kt`. The same handler runs in simulation and on a
``flower-supernode``.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgekd.clients.node import NODE_DATA_KEY, node_experiment
from edgekd.config import ExperimentConfig
from edgekd.datasets import default_padding, load_dataset, to_tensors
from edgekd.datasets.incremental import edge_indices, edge_selection, local_labels
from edgekd.experiment import experiment_split, load_bundle
from edgekd.models.pruned_resnet import PrunedResNet
from edgekd.protocol.common import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID
from edgekd.protocol.prune_kt import (
    NEW_ACC_AFTER,
    NEW_ACC_BEFORE,
    NEW_ACC_WITHOUT_KT,
    NEW_EXAMPLES,
    OLD_ACC_AFTER,
    OLD_ACC_BEFORE,
    OLD_ACC_WITHOUT_KT,
    TEACHER_RECORD,
    TEST_NEW,
    TEST_OLD,
    TRANSFER,
    TRANSFER_SECONDS,
    TransferPlan,
    read_transfer,
)
from edgekd.prune_kt_training import (
    Schedule,
    check_transfer_pair,
    expand_classifier,
    split_accuracy,
    transfer,
)
from edgekd.training import set_torch_threads

__all__ = ["edge_data", "register", "transfer_to_edge"]

Pair = tuple[torch.Tensor, torch.Tensor]


def edge_data(
    context: Context, cfg: ExperimentConfig, partition_id: int, plan: TransferPlan
) -> tuple[Pair, Pair]:
    """``((x, y), (x_test, y_test))`` of this edge, labels as outputs (old classes, then the
    new class): its own npz (node config), else its share of the run's data set."""
    path = str(context.node_config.get(NODE_DATA_KEY, "")).strip()
    bundle = load_dataset("npz", npz_path=path) if path else load_bundle(cfg)
    if path:
        everything = np.arange(len(bundle.y_train))
        train = edge_selection(
            bundle.y_train,
            everything,
            everything,
            old=plan.old_classes,
            new_class=plan.new_class,
            old_fraction=plan.old_fraction,
            seed=plan.seed,
        )
    else:
        split = experiment_split(cfg)
        train = edge_indices(
            bundle.y_train,
            split.core,
            split.partitions,
            partition_id,
            old=plan.old_classes,
            new_class=plan.new_class,
            old_fraction=plan.old_fraction,
            seed=plan.seed,
        )
    test_labels = local_labels(bundle.y_test, plan.old_classes, plan.new_class)
    test = np.flatnonzero(test_labels >= 0)
    train_labels = local_labels(bundle.y_train[train], plan.old_classes, plan.new_class)

    def tensors(x: np.ndarray, y: np.ndarray) -> Pair:
        return to_tensors(x, y, bundle.mean, bundle.std, normalize=cfg.normalize)

    return tensors(bundle.x_train[train], train_labels), tensors(
        bundle.x_test[test], test_labels[test]
    )


def _models(msg: Message, plan: TransferPlan, in_channels: int) -> tuple[PrunedResNet, ...]:
    """The received teacher and student (the student with its new output appended)."""
    check_transfer_pair(plan.teacher, plan.student)
    classes = len(plan.old_classes)
    teacher = PrunedResNet(plan.teacher, classes, in_channels)
    teacher.load_state_dict(msg.content[TEACHER_RECORD].to_torch_state_dict(), strict=True)
    student = PrunedResNet(plan.student, classes, in_channels)
    student.load_state_dict(msg.content[ARRAYS].to_torch_state_dict(), strict=True)
    expand_classifier(student, 1, seed=plan.seed)
    return teacher.eval(), student.eval()


def transfer_to_edge(msg: Message, context: Context) -> Message:
    """``train.pk_transfer``: learn the new class by layer-wise transfer, report accuracies."""
    cfg, partition_id = node_experiment(context)
    set_torch_threads(cfg.client_threads)
    plan = read_transfer(msg.content[CONFIG])
    (x, y), test = edge_data(context, cfg, partition_id, plan)
    num_old = len(plan.old_classes)
    new_examples = int((y == num_old).sum())
    if new_examples == 0:
        raise ValueError(
            f"partition {partition_id} has no training images of its new class "
            f"{plan.new_class}: nothing to learn"
        )
    teacher, student = _models(msg, plan, int(x.shape[1]))
    size = int(x.shape[-1])
    augment = (("augment", cfg.augment), ("padding", default_padding(size)), ("flip", size >= 16))
    schedule = Schedule(
        plan.epochs, plan.batch_size, plan.lr, plan.momentum, plan.weight_decay, plan.seed, augment
    )
    figures: dict[str, float] = {}
    figures[OLD_ACC_BEFORE], figures[NEW_ACC_BEFORE] = split_accuracy(student, *test, num_old)
    if plan.baseline:
        baseline = copy.deepcopy(student)
        transfer(baseline, None, x, y, schedule, lambdas=plan.lambdas, progress="without KT")
        figures[OLD_ACC_WITHOUT_KT], figures[NEW_ACC_WITHOUT_KT] = split_accuracy(
            baseline, *test, num_old
        )
    started = time.perf_counter()
    transfer(student, teacher, x, y, schedule, lambdas=plan.lambdas)
    figures[TRANSFER_SECONDS] = time.perf_counter() - started
    figures[OLD_ACC_AFTER], figures[NEW_ACC_AFTER] = split_accuracy(student, *test, num_old)
    metrics = {
        PARTITION_ID: partition_id,
        NUM_EXAMPLES: len(y),
        NEW_EXAMPLES: new_examples,
        TEST_OLD: int((test[1] < num_old).sum()),
        TEST_NEW: int((test[1] == num_old).sum()),
        **{k: v for k, v in figures.items() if v == v},  # NaN: no test images of that kind
    }
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def register(app: ClientApp) -> None:
    """Register ``train.pk_transfer`` on ``app``."""
    app.train(TRANSFER)(transfer_to_edge)
