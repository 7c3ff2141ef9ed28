"""Tests for edgekd.protocol: one definition of every key, imported by both sides, documented."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from flwr.app import MessageType

import edgekd.protocol as protocol
from edgekd.clients import cloned_distillation as cd_client
from edgekd.clients import fedmd as fedmd_client
from edgekd.clients import node
from edgekd.config import ExperimentConfig
from edgekd.protocol import cloned_distillation, common, fedmd, ktg

SETUP = {
    "server-round": 2,
    "client-models": "cnn, resnet8,vgg8",
    "representation-dim": 8,
    "public-source": "split",
    "public-fraction": 0.2,
    "pretrain-public-epochs": 1,
    "pretrain-private-epochs": 2,
    "private-test-size": 30,
    "seed": 5,
    "shared-init": False,
}


def test_package_keeps_the_names_strategies_import() -> None:
    """edgekd.protocol exports today's names, and they are the submodules' own objects."""
    assert protocol.ARRAYS is common.ARRAYS == "arrays"
    assert protocol.CONFIG is common.CONFIG == "config"
    assert protocol.METRICS is common.METRICS == "metrics"
    assert protocol.WHOAMI is common.WHOAMI == "whoami"
    assert protocol.ENSEMBLE_KEYS is cloned_distillation.ENSEMBLE_KEYS
    assert protocol.ENSEMBLE_KEYS == ("ensemble-size", "init", "init-seed")
    assert protocol.member_key is cloned_distillation.member_key


def test_member_keys() -> None:
    """Member 0 is "arrays", member i is "arrays-i"; negative indices are errors."""
    assert [protocol.member_key(i) for i in range(3)] == ["arrays", "arrays-1", "arrays-2"]
    with pytest.raises(ValueError, match=">= 0"):
        protocol.member_key(-1)


def test_fedmd_message_types_and_record_names() -> None:
    """FedMD's message types and record names have the values both sides have always used."""
    assert fedmd.MSG_SCORES == f"{MessageType.QUERY}.fedmd_scores" == "query.fedmd_scores"
    assert fedmd.MSG_TRAIN == f"{MessageType.TRAIN}.fedmd" == "train.fedmd"
    assert fedmd.MSG_EVALUATE == f"{MessageType.EVALUATE}.fedmd" == "evaluate.fedmd"
    assert (fedmd.PUBLIC, fedmd.CONSENSUS, fedmd.SCORES) == (
        "fedmd-public",
        "fedmd-consensus",
        "fedmd-scores",
    )


def test_clients_use_the_protocol_objects_themselves() -> None:
    """The client modules hold the protocol's objects, not copies."""
    assert fedmd_client.PUBLIC is fedmd.PUBLIC
    assert fedmd_client.CONSENSUS is fedmd.CONSENSUS
    assert fedmd_client.SCORES is fedmd.SCORES
    assert fedmd_client.FedMDSetup is fedmd.FedMDSetup
    assert fedmd_client.public_pool is fedmd.public_pool
    assert cd_client.ARRAYS is common.ARRAYS
    assert node.WHOAMI is common.WHOAMI


def test_strategies_use_the_protocol_objects_when_they_import_them() -> None:
    """A strategy that names a FedMD key holds the protocol's value (the same string)."""
    strategy = importlib.import_module("edgekd.strategies.fedmd")
    for name in ("MSG_SCORES", "MSG_TRAIN", "MSG_EVALUATE", "PUBLIC", "CONSENSUS", "SCORES"):
        if hasattr(strategy, name):
            assert getattr(strategy, name) == getattr(fedmd, name)


def test_setup_round_trips_through_a_config_record() -> None:
    """FedMDSetup.to_config gives a record that from_config parses to the same setup."""
    setup = fedmd.FedMDSetup.from_config(SETUP)
    assert setup.client_models == ("cnn", "resnet8", "vgg8")
    assert fedmd.FedMDSetup.from_config(setup.to_config()) == setup
    assert setup.model_name(4) == "resnet8"
    extra = setup.to_config(**{"with-representations": True})
    assert extra[fedmd.WITH_REPRESENTATIONS] is True


def test_setup_missing_key_is_a_protocol_error() -> None:
    """A message config without a setup key names the key."""
    config = {k: v for k, v in SETUP.items() if k != "seed"}
    with pytest.raises(ValueError, match="lacks the key 'seed'"):
        fedmd.FedMDSetup.from_config(config)


def test_digest_settings_round_trip() -> None:
    """DigestSettings.to_config holds exactly the keys from_config reads."""
    settings = fedmd.DigestSettings(2, 0.01, 2.0, "kl", 1.0, 1)
    assert fedmd.DigestSettings.from_config(settings.to_config()) == settings


def test_private_config_takes_the_public_split_out() -> None:
    """ "split" moves the public fraction into the core split; an npz source changes nothing."""
    cfg = ExperimentConfig.from_run_config({"dataset": "npz", "npz-path": "x.npz"})
    assert fedmd.private_config(cfg, "split", 0.25).core_fraction == 0.25
    assert fedmd.private_config(cfg, "npz:/a.npz", 0.25) is cfg
    setup = fedmd.FedMDSetup.from_config(SETUP)
    assert setup.private_config(cfg).core_fraction == 0.2


def test_public_source_checks_name_the_key() -> None:
    """Bad sources and fractions are errors that name the run-config key."""
    with pytest.raises(ValueError, match="fedmd-public-source"):
        fedmd.check_public_source("http://x", 0.1)
    with pytest.raises(ValueError, match="fedmd-public-fraction"):
        fedmd.check_public_source("split", 1.0)
    fedmd.check_public_source("npz:/anything", 0.0)


def test_public_pool_size_matches_the_pool(tiny_npz: Path) -> None:
    """The server's pool size is the number of rows of the pool the clients load."""
    cfg = ExperimentConfig.from_run_config(
        {"dataset": "npz", "npz-path": str(tiny_npz), "num-partitions": 2}
    )
    for source, fraction in [("split", 0.25), (f"npz:{tiny_npz}", 0.0)]:
        pool = fedmd.public_pool(cfg, source, fraction)
        assert fedmd.public_pool_size(cfg, source, fraction) == len(pool.data)


def test_missing_npz_names_the_file(tmp_path: Path) -> None:
    """A public npz that does not exist is a FileNotFoundError naming the source."""
    with pytest.raises(FileNotFoundError, match="not found"):
        fedmd.public_npz_path(f"npz:{tmp_path / 'none.npz'}")


@pytest.mark.parametrize(
    ("module", "words"),
    [
        (common, ["query.whoami", "partition-id", "num-partitions", "num-examples"]),
        (
            cloned_distillation,
            [
                "ensemble-size",
                "init-seed",
                "arrays-1",
                "partition-id",
                "simulated-noisy",
                "simulated-delay-s",
                "eval-acc",
            ],
        ),
        (
            fedmd,
            [
                "query.fedmd_scores",
                "train.fedmd",
                "evaluate.fedmd",
                "fedmd-public",
                "fedmd-consensus",
                "fedmd-scores",
                "with-representations",
                "shared-init",
                "private-acc",
            ],
        ),
        (
            ktg,
            [
                "query.ktg_logits",
                "train.ktg",
                "evaluate.ktg",
                "ktg-public",
                "ktg-logits",
                "ktg-targets",
                "node-models",
                "self-weight",
                "temperature",
                "test-acc",
            ],
        ),
    ],
)
def test_each_format_is_documented(module: object, words: list[str]) -> None:
    """Each protocol module's docstring documents every key it defines."""
    doc = module.__doc__ or ""
    missing = [w for w in words if w not in doc]
    assert not missing, f"{module.__name__} does not document {missing}"
