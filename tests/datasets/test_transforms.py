"""Tests for edgekd.datasets.transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.datasets import BatchLoader, augment_batch, default_padding, to_tensors


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_tensors_hand_computed() -> None:
    """to_tensors gives float32 NCHW normalised per channel and int64 labels."""
    x = np.zeros((2, 1, 2, 3), dtype=np.uint8)
    x[0, 0, 1] = [255, 51, 0]
    y = np.array([3, 1], dtype=np.int32)
    xt, yt = to_tensors(x, y, mean=(0.5, 0.1, 0.0), std=(0.5, 0.2, 1.0))
    assert xt.shape == (2, 3, 1, 2)
    assert xt.dtype == torch.float32
    assert yt.dtype == torch.int64
    assert yt.tolist() == [3, 1]
    # Pixel (row 0, col 1) of sample 0: (255/255 - 0.5)/0.5, (51/255 - 0.1)/0.2, (0 - 0)/1.
    torch.testing.assert_close(xt[0, :, 0, 1], torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(xt[1, :, 0, 0], torch.tensor([-1.0, -0.5, 0.0]))


def test_to_tensors_without_normalisation_in_unit_range() -> None:
    """normalize=False maps uint8 0..255 to [0, 1] exactly at the ends."""
    x = np.array([[[[0], [255]], [[128], [64]]]], dtype=np.uint8)
    xt, _ = to_tensors(x, np.array([0]), mean=(), std=(), normalize=False)
    assert xt.shape == (1, 1, 2, 2)
    assert xt.min().item() == 0.0
    assert xt.max().item() == 1.0
    assert xt[0, 0, 1, 0].item() == pytest.approx(128 / 255)


def test_to_tensors_rejects_bad_input() -> None:
    """Wrong dtype, label count or number of channel statistics raises ValueError."""
    x = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="float32"):
        to_tensors(x.astype(np.float32), np.zeros(2), (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        to_tensors(x, np.zeros(3, dtype=np.int64), (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match="3 values"):
        to_tensors(x, np.zeros(2, dtype=np.int64), (0.0,), (1.0,))


def test_default_padding() -> None:
    """default_padding is 4 for 32x32 images and 1 for 8x8 digits."""
    assert default_padding(32) == 4
    assert default_padding(8) == 1
    assert default_padding(4) == 1
    with pytest.raises(ValueError, match="0"):
        default_padding(0)


def test_augment_batch_shape_and_determinism() -> None:
    """augment_batch keeps the shape and is reproducible with an equally seeded generator."""
    x = torch.rand(16, 3, 8, 8, generator=_gen(0))
    a = augment_batch(x, _gen(1), padding=2)
    b = augment_batch(x, _gen(1), padding=2)
    c = augment_batch(x, _gen(2), padding=2)
    assert a.shape == x.shape
    assert a.dtype == x.dtype
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_augment_batch_flip_only_gives_image_or_mirror() -> None:
    """With padding=0 every output is the input or its left-right mirror, and both occur."""
    x = torch.rand(64, 2, 5, 5, generator=_gen(0))
    out = augment_batch(x, _gen(3), padding=0, flip=True)
    same = (out == x).flatten(1).all(dim=1)
    mirrored = (out == x.flip(3)).flatten(1).all(dim=1)
    assert torch.all(same | mirrored)
    assert same.any()
    assert mirrored.any()


def test_augment_batch_crop_is_a_shift_of_the_zero_padded_image() -> None:
    """With flip=False each output is one of the (2p+1)^2 crops of the zero-padded input,
    and different samples receive different offsets."""
    padding = 1
    x = torch.rand(32, 3, 6, 6, generator=_gen(0)) + 1.0  # strictly positive, unlike padding
    out = augment_batch(x, _gen(4), padding=padding, flip=False)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = []
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) > 1


def test_augment_batch_identity_without_augmentation() -> None:
    """padding=0 and flip=False returns an equal copy, not the input tensor itself."""
    x = torch.rand(4, 1, 3, 3, generator=_gen(0))
    out = augment_batch(x, _gen(0), padding=0, flip=False)
    assert torch.equal(out, x)
    assert out is not x


def _epoch(loader: BatchLoader) -> list[torch.Tensor]:
    return [yb for _, yb in loader]


def test_batch_loader_covers_every_sample_once_per_epoch() -> None:
    """Each epoch yields every sample exactly once, in len(loader) batches, x and y aligned."""
    n = 53
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    y = torch.arange(n)
    loader = BatchLoader(x, y, batch_size=10, shuffle=True, seed=0)
    assert len(loader) == 6
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == len(loader)
        for xb, yb in batches:
            assert torch.equal(xb.view(-1).long(), yb)
        seen = torch.cat([yb for _, yb in batches])
        assert sorted(seen.tolist()) == list(range(n))


def test_batch_loader_drop_last_and_no_shuffle() -> None:
    """drop_last drops the partial batch; shuffle=False keeps the original order."""
    x = torch.zeros(25, 2)
    y = torch.arange(25)
    loader = BatchLoader(x, y, batch_size=10, shuffle=False, seed=0, drop_last=True)
    assert len(loader) == 2
    assert torch.cat(_epoch(loader)).tolist() == list(range(20))


def test_batch_loader_seeded_order() -> None:
    """Same seed gives the same sequence of epochs, another seed a different order, and
    consecutive epochs are reshuffled; set_epoch replays an epoch."""
    x = torch.zeros(100, 1, 4, 4)
    y = torch.arange(100)
    a = BatchLoader(x, y, 16, shuffle=True, seed=5, augment=True, padding=1)
    b = BatchLoader(x, y, 16, shuffle=True, seed=5, augment=True, padding=1)
    c = BatchLoader(x, y, 16, shuffle=True, seed=6, augment=True, padding=1)
    a0, a1 = torch.cat(_epoch(a)), torch.cat(_epoch(a))
    b0, b1 = torch.cat(_epoch(b)), torch.cat(_epoch(b))
    c0 = torch.cat(_epoch(c))
    assert torch.equal(a0, b0)
    assert torch.equal(a1, b1)
    assert not torch.equal(a0, a1)
    assert not torch.equal(a0, c0)
    assert sorted(c0.tolist()) == sorted(a0.tolist())
    a.set_epoch(0)
    assert torch.equal(torch.cat(_epoch(a)), a0)


def test_batch_loader_augmentation_is_reproducible() -> None:
    """Augmented batches are identical for two loaders with the same seed."""
    x = torch.rand(20, 3, 8, 8, generator=_gen(0))
    y = torch.arange(20)
    first = [xb for xb, _ in BatchLoader(x, y, 8, shuffle=True, seed=1, augment=True, padding=1)]
    second = [xb for xb, _ in BatchLoader(x, y, 8, shuffle=True, seed=1, augment=True, padding=1)]
    for xa, xb in zip(first, second, strict=True):
        assert xa.shape[1:] == (3, 8, 8)
        torch.testing.assert_close(xa, xb)


def test_batch_loader_rejects_bad_arguments() -> None:
    """Mismatched lengths, batch_size < 1 and negative seeds raise ValueError."""
    with pytest.raises(ValueError, match="4 and 3"):
        BatchLoader(torch.zeros(4, 1), torch.zeros(3), 2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchLoader(torch.zeros(4, 1), torch.zeros(4), 0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="-1"):
        BatchLoader(torch.zeros(4, 1), torch.zeros(4), 2, shuffle=False, seed=-1)
