"""Tests for edgekd.seeds: every stream's formula against hand-computed values."""

from __future__ import annotations

import pytest

from edgekd.seeds import STREAMS, derive_seed


@pytest.mark.parametrize(
    ("stream", "kwargs", "expected"),
    [
        # seed 3: 3 * 7_919 + 2 = 23_759
        ("edge-init", {"server_round": 2}, 23_759),
        # 3 * 1_009 + 2 = 3_029
        ("distill", {"server_round": 2}, 3_029),
        # 3 + 17
        ("distill-pool", {"server_round": 5, "partition": 4}, 20),
        # 3 * 1_000_003 + 2 * 1_009 + 4 = 3_000_009 + 2_018 + 4 = 3_002_031
        ("client-train", {"server_round": 2, "partition": 4}, 3_002_031),
        # 3 + 7_919 * 2 = 15_841
        ("member", {"member": 2}, 15_841),
        # 3 + 1_000_003
        ("label-noise", {}, 1_000_006),
        # 3 * 1_000_003 + 4 = 3_000_013
        ("fedmd-pretrain", {"partition": 4}, 3_000_013),
        # 3 * 7_919 + 4 = 23_761
        ("fedmd-private-test", {"partition": 4}, 23_761),
        # 3 * 1_000 + 4 + 1 = 3_005
        ("fedmd-init", {"partition": 4}, 3_005),
        # 3 * 1_000, whatever the partition
        ("fedmd-shared-init", {"partition": 4}, 3_000),
        # 3 * 1_009 + 104_729 = 107_756
        ("ce-teacher", {}, 107_756),
        # 3 * 7_919 + 104_729 - 6 = 128_480
        ("ce-student", {}, 128_480),
        # 3 * 1_000_003 + 104_729 - 12 = 3_104_726
        ("ce-distill", {}, 3_104_726),
        # 3 + 104_729 - 18
        ("ce-val", {"server_round": 2}, 104_714),
        # 3 * 7_919 + 15_485_863 + 4 = 15_509_624
        ("ktg-init", {"partition": 4}, 15_509_624),
        # 3 + 15_485_863
        ("ktg-public", {"server_round": 2, "partition": 4}, 15_485_866),
        # 3 * 7_919 + 224_737 + 1
        ("pk-init", {"member": 1}, 248_495),
        # 3 * 1_009 + 224_737
        ("pk-teacher", {}, 227_764),
        # 3 * 1_000_003 + 224_737 + 900
        ("pk-student", {"member": 900}, 3_225_646),
        # 3 + 224_737 - 6
        ("pk-stats", {}, 224_734),
        # 3 * 7_919 + 224_737 + 7 * 2 + 11
        ("pk-edge", {"partition": 2}, 248_519),
        # 3 * 1_000_003 + 15_485_863 - 7 = 18_485_865
        ("ktg-train", {"partition": 2}, 18_485_865),
        # 3 * 1_009 + 15_485_863 - 13 - 101 * 2 = 15_488_675
        ("ktg-teacher", {"partition": 2}, 15_488_675),
    ],
)
def test_each_stream_by_hand(stream: str, kwargs: dict[str, int], expected: int) -> None:
    """Each stream gives the hand-computed value for seed 3."""
    assert derive_seed(stream, 3, **kwargs) == expected


def test_every_stream_is_tested_by_hand() -> None:
    """The hand-computed table above covers every stream (a new stream needs a new row)."""
    assert set(STREAMS) == {
        "edge-init",
        "distill",
        "distill-pool",
        "client-train",
        "member",
        "label-noise",
        "fedmd-pretrain",
        "fedmd-private-test",
        "fedmd-init",
        "fedmd-shared-init",
        "ce-teacher",
        "ce-student",
        "ce-distill",
        "ce-val",
        "ktg-init",
        "ktg-public",
        "pk-init",
        "pk-teacher",
        "pk-student",
        "pk-stats",
        "pk-edge",
        "ktg-train",
        "ktg-teacher",
    }


def test_unknown_stream_names_the_known_ones() -> None:
    """An unknown stream is a ValueError that lists the valid names."""
    with pytest.raises(ValueError, match=r"unknown seed stream 'typo'.*'client-train'"):
        derive_seed("typo", 0)


def test_client_train_streams_of_neighbouring_partitions_and_rounds_differ() -> None:
    """Within one run, no two (round, partition) pairs of a small federation share a seed."""
    seeds = {
        derive_seed("client-train", 0, server_round=r, partition=p)
        for r in range(50)
        for p in range(20)
    }
    assert len(seeds) == 50 * 20


def test_cloud_edge_streams_differ_for_every_seed() -> None:
    """Teacher, student, distillation and validation streams never coincide (seed 0 too)."""
    for seed in range(50):
        values = {
            derive_seed(s, seed) for s in ("ce-teacher", "ce-student", "ce-distill", "ce-val")
        }
        assert len(values) == 4, seed


def test_ktg_streams_differ_for_every_seed() -> None:
    """Node inits, the training order and teacher pretraining never coincide (4 nodes)."""
    for seed in range(50):
        values = [derive_seed("ktg-init", seed, partition=p) for p in range(4)]
        values += [derive_seed("ktg-teacher", seed, partition=p) for p in range(4)]
        values.append(derive_seed("ktg-train", seed))
        assert len(set(values)) == 9, seed
