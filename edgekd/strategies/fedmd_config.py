"""The ``fedmd-*`` settings of FedMD (:mod:`edgekd.strategies.fedmd`).

The server parses them once; the clients receive what they need in every message's
``config`` record (:class:`edgekd.protocol.fedmd.FedMDSetup`), never the run config's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgekd.config import ExperimentConfig, Rules, check_fields, parse_section
from edgekd.models import list_models
from edgekd.protocol.fedmd import check_public_source, private_config

__all__ = ["LOGIT_LOSSES", "METHODS", "WEIGHTINGS", "FedMDConfig"]

METHODS = ("CE", "KD", "LKD", "FedAvg")
LOGIT_LOSSES = ("kl", "mse", "mae")
WEIGHTINGS = ("uniform", "num-examples")
_RULES = Rules(
    choices={"method": METHODS, "logit_loss": LOGIT_LOSSES, "consensus_weighting": WEIGHTINGS},
    at_least={
        1: "representation_dim alignment_size private_test_size",
        0: "pretrain_public_epochs pretrain_private_epochs digest_epochs revisit_epochs "
        "latent_weight",
    },
    positive="digest_lr temperature",
)


@dataclass(frozen=True)
class FedMDConfig:
    """The ``fedmd-*`` keys of the run config (``fedmd-<field name in kebab-case>``).

    Attributes
    ----------
    method : {"CE", "KD", "LKD", "FedAvg"}
        What the clients share, see the module docstring. Default ``"LKD"``.
    client_models : str
        Comma-separated model names, assigned round-robin by partition id. Default
        ``"cnn,resnet8,vgg8"``.
    representation_dim : int
        r, the size of the representation layer before every output layer. Default 64.
    public_source : str
        ``"split"`` (a stratified ``public_fraction`` of the training set, taken out of the
        private partitions) or ``"npz:<path>"`` (another data set of the same image shape, e.g.
        ``npz:../shared/data/cifar100_head.npz``). Default ``"split"``.
    public_fraction : float
        Public share in ``"split"`` mode. Default 0.1.
    alignment_size : int
        Public images in each round's alignment subset (seeded by ``seed`` and round).
        Default 256.
    pretrain_public_epochs, pretrain_private_epochs : int
        Transfer learning before the first round (defaults 1 and 2).
    digest_epochs : int
        Epochs over the alignment subset towards the consensus per round. Default 1.
    digest_lr : float
        SGD learning rate of the digest (momentum and weight decay from the run config).
        Default 0.01.
    revisit_epochs : int
        Epochs on the private data per round (``lr``, ``lr-schedule`` of the run config).
        Default 1.
    temperature : float
        Temperature of the ``"kl"`` logit loss. Default 2.0.
    logit_loss : {"kl", "mse", "mae"}
        Loss between a client's logits and the consensus logits. Default ``"kl"``.
    latent_weight : float
        Weight of the representation MSE (LKD only). Default 1.0.
    private_test_size : int
        Size of each client's private test set, drawn from the test split with the client's
        label distribution. Default 200.
    consensus_weighting : {"uniform", "num-examples"}
        Plain mean, or weights proportional to the clients' private data sizes.
    """

    method: str = "LKD"
    client_models: str = "cnn,resnet8,vgg8"
    representation_dim: int = 64
    public_source: str = "split"
    public_fraction: float = 0.1
    alignment_size: int = 256
    pretrain_public_epochs: int = 1
    pretrain_private_epochs: int = 2
    digest_epochs: int = 1
    digest_lr: float = 0.01
    revisit_epochs: int = 1
    temperature: float = 2.0
    logit_loss: str = "kl"
    latent_weight: float = 1.0
    private_test_size: int = 200
    consensus_weighting: str = "uniform"

    def __post_init__(self) -> None:
        """Validate every value, naming the bad key."""
        check_fields(self, "fedmd-", _RULES)
        unknown = [m for m in self.models if m not in list_models()]
        if not self.models or unknown:
            raise ValueError(
                f"fedmd-client-models has unknown or no model names {unknown or ''} in "
                f"{self.client_models!r}; valid names: {', '.join(list_models())}"
            )
        if self.method == "FedAvg" and len(set(self.models)) != 1:
            raise ValueError(
                "fedmd-method 'FedAvg' needs one architecture for every client, got "
                f"fedmd-client-models={self.client_models!r}"
            )
        check_public_source(self.public_source, self.public_fraction)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FedMDConfig:
        """Parse the ``fedmd-*`` keys; absent keys take the defaults."""
        return parse_section(cls, run_config, "fedmd-")

    @property
    def models(self) -> tuple[str, ...]:
        """The model names of ``client_models``."""
        return tuple(m.strip() for m in self.client_models.split(",") if m.strip())

    def model_name(self, partition_id: int) -> str:
        """The architecture of partition ``partition_id`` (round-robin)."""
        return self.models[partition_id % len(self.models)]

    @property
    def shares_scores(self) -> bool:
        """KD and LKD query scores and send a consensus."""
        return self.method in {"KD", "LKD"}

    def private_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The experiment config whose partitions are the private data (protocol rule)."""
        return private_config(cfg, self.public_source, self.public_fraction)
