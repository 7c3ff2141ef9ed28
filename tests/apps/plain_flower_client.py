"""A ClientApp written against Flower's API only: no edgekd import, no edgekd-specific queries.

What a third-party Flower user writes (Flower's quickstart conventions): ``@app.train()`` loads
the received ``arrays`` into the model the run config names, trains it on this node's own data
and replies with ``arrays`` + ``metrics["num-examples"]``; ``@app.evaluate()`` scores the
received model. The node's data is partition ``partition-id`` of ``num-partitions`` (its node
config) of the run config's ``npz-path``. Only ``model = "cnn"`` is known here: a small
CNN whose parameter names match the server's (``backbone.N``, ``classifier``).

Used by the tests as the ``clientapp`` of an app directory (``flwr run``) and in process.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

app = ClientApp()


class Net(nn.Module):
    """The run config's ``cnn``: three conv-BN-ReLU blocks, global pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU()]

        self.backbone = nn.Sequential(
            *block(in_channels, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            nn.MaxPool2d(2),
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores."""
        return self.classifier(self.backbone(x))


def _model(
    message: Message, context: Context, data: tuple[torch.Tensor, torch.Tensor]
) -> nn.Module:
    if context.run_config.get("model", "cnn") != "cnn":
        raise ValueError(f"this client only knows model 'cnn', got {context.run_config['model']!r}")
    state = message.content["arrays"].to_torch_state_dict()
    net = Net(int(state["classifier.weight"].shape[0]), int(data[0].shape[1]))
    net.load_state_dict(state, strict=True)
    return net


def _data(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's share of the training split: an equal contiguous slice."""
    with np.load(str(context.run_config["npz-path"])) as npz:
        x, y = npz["x_train"], npz["y_train"]
    part = int(context.node_config["partition-id"])
    parts = np.array_split(np.arange(len(y)), int(context.node_config["num-partitions"]))
    idx = parts[part]
    images = torch.from_numpy(x[idx]).float().permute(0, 3, 1, 2) / 255.0
    return images, torch.from_numpy(y[idx]).long()


@app.train()
def train(message: Message, context: Context) -> Message:
    """One epoch of SGD on this node's data; reply with the trained arrays."""
    x, y = _data(context)
    net = _model(message, context, (x, y))
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(int(context.node_config["partition-id"]))
    losses = []
    for batch in torch.randperm(len(y), generator=generator).split(16):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    metrics = MetricRecord({"num-examples": len(y), "train-loss": float(np.mean(losses))})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on this node's data."""
    x, y = _data(context)
    net = _model(message, context, (x, y))
    net.eval()
    with torch.no_grad():
        logits = net(x)
    metrics = MetricRecord(
        {
            "num-examples": len(y),
            "eval-loss": float(nn.functional.cross_entropy(logits, y)),
            "eval-acc": float((logits.argmax(1) == y).float().mean()),
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=message)
