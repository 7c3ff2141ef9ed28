"""Tests for the NMD loss (edgekd.losses.cloud_edge): invariances, finiteness, LTSA reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekd.losses.cloud_edge import (
    ltsa_projector,
    manifold_distance,
    manifold_gram,
    nmd_loss,
    soft_target_loss,
)

MANIFOLDS = ["linear", "ltsa"]


def _features(n: int = 24, width: int = 10, seed: int = 0) -> torch.Tensor:
    """Samples of a curved 2-D surface embedded in ``width`` dimensions (a clear manifold)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 2, generator=g, dtype=torch.float64) * 3
    surface = torch.cat([z, torch.sin(z), z[:, :1] * z[:, 1:]], dim=1)
    return surface @ torch.randn(5, width, generator=g, dtype=torch.float64)


def _orthogonal(width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_zero_for_identical_features(manifold: str) -> None:
    """Identical teacher and student features give a manifold distance of 0."""
    x = _features()
    d = manifold_distance(x, x.clone(), manifold=manifold, dim=3, neighbors=6)
    assert d.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_invariant_to_rotation_and_sign_flips(manifold: str) -> None:
    """An orthogonal rotation plus sign flips of the features leaves the loss at 0."""
    x = _features()
    signs = torch.tensor([1.0, -1.0] * 5, dtype=torch.float64)
    moved = (x @ _orthogonal(10, 1)) * signs
    d = manifold_distance(moved, x, manifold=manifold, dim=3, neighbors=6)
    assert d.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_loss_unchanged_when_either_side_is_rotated(manifold: str) -> None:
    """For different teacher and student features, rotating and sign-flipping either side's
    features leaves the (non-zero) distance unchanged."""
    s, t = _features(seed=3), _features(width=7, seed=4)
    options = {"manifold": manifold, "dim": 3, "neighbors": 6}
    base = manifold_distance(s, t, **options).item()
    flips = torch.tensor([-1.0, 1.0] * 5, dtype=torch.float64)
    moved_s = (s @ _orthogonal(10, 5)) * flips
    moved_t = -(t @ _orthogonal(7, 6))
    assert base > 0.01
    assert manifold_distance(moved_s, t, **options).item() == pytest.approx(base, abs=1e-9)
    assert manifold_distance(s, moved_t, **options).item() == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_invariant_to_width_and_scale(manifold: str) -> None:
    """A wider (zero-padded) and rescaled copy of the teacher's features is at distance 0."""
    x = _features()
    wider = 3.0 * torch.cat([x, torch.zeros(len(x), 7, dtype=x.dtype)], dim=1)
    assert manifold_distance(wider, x, manifold=manifold, dim=3, neighbors=6).item() == (
        pytest.approx(0.0, abs=1e-10)
    )


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_positive_for_a_distorted_geometry(manifold: str) -> None:
    """Stretching one feature axis (not an orthogonal map) gives a clearly positive distance."""
    x = _features()
    stretched = x.clone()
    stretched[:, 0] *= 10.0
    assert manifold_distance(stretched, x, manifold=manifold, dim=3, neighbors=6).item() > 0.01


def test_linear_gram_is_eq12_gram() -> None:
    """For the linear psi, M is V^T V of Eq. 12 (V = diag(sigma_1..d) Q_d^T), unit-normed."""
    x = _features(n=12, width=6)
    xc = (x - x.mean(0)).numpy()
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    v = np.diag(s[:2]) @ u[:, :2].T  # (d, N): the batch's linear manifold coordinates
    expected = v.T @ v
    expected /= np.linalg.norm(expected)
    got = manifold_gram(x, manifold="linear", dim=2).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_large_feature_scales_are_handled(manifold: str) -> None:
    """Features of magnitude 1e6 (untrained deep nets) give the same geometry as at scale 1."""
    x = _features()
    got = manifold_gram(1e6 * x, manifold=manifold, dim=3, neighbors=6)
    torch.testing.assert_close(got, manifold_gram(x, manifold=manifold, dim=3, neighbors=6))


@pytest.mark.parametrize(("dim", "neighbors"), [(1, 6), (2, 8), (2, 12)])
def test_ltsa_subspace_matches_sklearn(dim: int, neighbors: int) -> None:
    """The LTSA coordinates span the same subspace as sklearn's LTSA on a swiss roll."""
    manifold = pytest.importorskip("sklearn.manifold")
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 3 * np.pi, 60)
    x = np.stack([t * np.cos(t), rng.uniform(0, 5, 60), t * np.sin(t)], 1)
    x += 0.01 * rng.normal(size=x.shape)
    lle = manifold.LocallyLinearEmbedding(
        n_neighbors=neighbors, n_components=dim, method="ltsa", eigen_solver="dense"
    )
    y = lle.fit_transform(x)
    q, _ = np.linalg.qr(y - y.mean(0))
    xt = torch.tensor(x)
    got = ltsa_projector(xt @ xt.T, dim, neighbors).numpy()
    np.testing.assert_allclose(got, q @ q.T, atol=1e-8)


def _degenerate_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = [1, 2, 3, 4, 8, 16][seed % 6]
    kind = seed % 5
    s = torch.randn(n, 4, 3, 3, generator=g)
    t = torch.randn(n, 8, 3, 3, generator=g)
    if kind == 1:  # every sample duplicated
        s, t = s[:1].repeat(n, 1, 1, 1), t[:1].repeat(n, 1, 1, 1)
    elif kind == 2:  # half duplicates
        s, t = s[torch.arange(n) // 2], t[torch.arange(n) // 2]
    elif kind == 3:  # rank-1 features
        s = torch.randn(n, 1, 1, 1, generator=g) * torch.randn(1, 4, 3, 3, generator=g)
    elif kind == 4:  # all-zero student features
        s = torch.zeros_like(s)
    return s, t


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_finite_gradients_on_degenerate_batches(manifold: str) -> None:
    """100 random batches (duplicates, rank 1, zeros, batch of 1): finite loss and gradients,
    and no gradient reaches the teacher."""
    for seed in range(100):
        s, t = _degenerate_batch(seed)
        s.requires_grad_(True)
        t.requires_grad_(True)
        n = len(s)
        s_logits = torch.randn(n, 5, requires_grad=True)
        t_logits = torch.randn(n, 5, requires_grad=True)
        loss = nmd_loss(
            s_logits,
            t_logits,
            torch.zeros(n, dtype=torch.long),
            [s, s * 2],
            [t, t + 1],
            stage_weights=[2.0, 1.0],
            manifold=manifold,
            dim=3,
            neighbors=4,
        )
        loss.backward()
        assert torch.isfinite(loss), seed
        assert torch.isfinite(s.grad).all(), seed
        assert torch.isfinite(s_logits.grad).all(), seed
        assert t.grad is None and t_logits.grad is None, seed


@pytest.mark.parametrize("manifold", MANIFOLDS)
def test_gradient_moves_the_student(manifold: str) -> None:
    """Different geometries give a non-zero student gradient that lowers the distance."""
    t = _features(seed=1).float()
    s = _features(seed=2).float().requires_grad_(True)
    before = manifold_distance(s, t, manifold=manifold, dim=3, neighbors=6)
    before.backward()
    assert s.grad.abs().sum() > 0
    with torch.no_grad():
        after = manifold_distance(s - 0.5 * s.grad, t, manifold=manifold, dim=3, neighbors=6)
    assert after < before


def test_nmd_is_st_plus_weighted_manifold_terms() -> None:
    """nmd_loss = alpha CE + beta t^2 KL + sum_j lambda_j d_j, each part computed separately."""
    g = torch.Generator().manual_seed(3)
    s_logits, t_logits = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    s_feats = [torch.randn(6, 3, 4, 4, generator=g) for _ in range(2)]
    t_feats = [torch.randn(6, 5, 4, 4, generator=g) for _ in range(2)]
    options = {"manifold": "ltsa", "dim": 2, "neighbors": 4}
    expected = soft_target_loss(s_logits, t_logits, labels, alpha=0.5, beta=0.8, temperature=2.0)
    expected = expected + 3.0 * manifold_distance(s_feats[0], t_feats[0], **options)
    expected = expected + 0.5 * manifold_distance(s_feats[1], t_feats[1], **options)
    got = nmd_loss(
        s_logits,
        t_logits,
        labels,
        s_feats,
        t_feats,
        stage_weights=[3.0, 0.5],
        alpha=0.5,
        beta=0.8,
        temperature=2.0,
        **options,
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_target_loss_hand_value() -> None:
    """ST on one 2-class sample: alpha CE + beta t^2 KL computed with plain math."""
    t = 2.0
    s_logits, t_logits = [0.0, 1.0], [2.0, 0.0]

    def softmax(z: list[float], temp: float) -> list[float]:
        e = [math.exp(v / temp) for v in z]
        return [v / sum(e) for v in e]

    ce = -math.log(softmax(s_logits, 1.0)[0])
    p, q = softmax(t_logits, t), softmax(s_logits, t)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    got = soft_target_loss(
        torch.tensor([s_logits]),
        torch.tensor([t_logits]),
        torch.tensor([0]),
        alpha=0.3,
        beta=0.7,
        temperature=t,
    )
    assert got.item() == pytest.approx(0.3 * ce + 0.7 * t * t * kl, rel=1e-6)


def test_errors_name_the_bad_value() -> None:
    """Unknown manifolds, bad dimensions, mismatched stages and negative weights are refused."""
    x = _features(n=4)
    with pytest.raises(ValueError, match=r"manifold.*'isomap'"):
        manifold_gram(x, manifold="isomap")
    with pytest.raises(ValueError, match=r"dim.*0"):
        manifold_gram(x, dim=0)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        manifold_gram(torch.full((4, 3), float("nan")), manifold="ltsa", dim=1, neighbors=2)
    with pytest.raises(ValueError, match="batch 4 does not match teacher batch 3"):
        manifold_distance(x, x[:3])
    logits = torch.zeros(4, 3)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="stage counts differ"):
        nmd_loss(logits, logits, labels, [x], [x, x], stage_weights=[1.0])
    with pytest.raises(ValueError, match=r"stage_weights\[0\].*-1"):
        nmd_loss(logits, logits, labels, [x], [x], stage_weights=[-1.0])
