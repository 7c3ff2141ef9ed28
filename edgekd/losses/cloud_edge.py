"""Neuron manifold distillation (NMD) of the cloud-edge paper.

Paper: "An Efficient and Robust Cloud-Based Deep Learning With Knowledge Distillation", IEEE
Transactions on Cloud Computing 11(2), 2023, https://doi.org/10.1109/TCC.2022.3160129 (Eq. 3,
9-12 and 16-23).

Eq. 3: ``L = alpha * CE(p_s, y) + beta * t^2 * KL(p_t || p_s) + sum_j lambda_j *
d(psi(f_j^t), psi(f_j^s))``, one manifold term per residual stage ``j``, where ``psi`` maps a
batch's features to a ``d``-dimensional manifold: linear (PCA of the centred batch, Eq. 9-12,
``V = diag(sigma_1..sigma_d) Q_d^T``) or nonlinear (LTSA, Zhang and Zha 2004, Eq. 16-23).

``psi`` is defined only up to sign and rotation of its ``d`` coordinates, and teacher and
student stages have different widths, so the literal ``||psi_t - psi_s||^2`` is ill-posed. Here
``d`` is the squared Frobenius distance of the *manifold Gram matrices* of the batch, each scaled
to unit Frobenius norm::

    M(X) = P K P / ||P K P||_F,   K = H X X^T H  (centred N x N Gram),   d = ||M_t - M_s||_F^2,

with ``P`` the orthogonal projector (N x N) onto the span of ``psi``'s ``d`` coordinates over
the batch: the top-``d`` principal directions for ``"linear"`` (then ``P K P = V^T V`` exactly,
the Gram of Eq. 12's ``V``) and the LTSA coordinates for ``"ltsa"``. ``M`` is unchanged by any
orthogonal map (sign flips, rotations) of ``psi``'s coordinates and of the feature space, needs
no matching widths, and lies in ``[0, 4]``. The scaling removes the teacher/student difference
in feature magnitude (a design choice: the paper does not say how it handles it).

Gradients: ``P`` is computed without gradient (a fixed projector for the step), so no gradient
goes through eigenvectors, whose derivatives contain ``1 / (lambda_i - lambda_j)`` and are
infinite for repeated eigenvalues (duplicated samples, rank-deficient features). The student's
gradient flows through ``K``; the teacher's features are detached. Batches with fewer than two
distinct samples give ``M = 0`` (no manifold), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.losses.checks import check_logits, check_matching_logits, is_finite_real
from edgekd.losses.kd import kd_kl_loss

__all__ = [
    "MANIFOLDS",
    "ltsa_projector",
    "manifold_distance",
    "manifold_gram",
    "manifold_term",
    "nmd_loss",
    "pca_projector",
    "soft_target_loss",
]

MANIFOLDS = ("linear", "ltsa")
_EPS = 1e-12


def _flat(name: str, features: Tensor) -> Tensor:
    if not isinstance(features, Tensor) or features.dim() < 2 or len(features) == 0:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a (B, ...) tensor with B >= 1, got {shape}")
    return features.flatten(1)


def _unit_scale(gram: Tensor) -> Tensor:
    """``gram`` in float64, divided by its largest entry (projectors do not change)."""
    g = gram.double()
    return g / g.abs().max().clamp_min(torch.finfo(torch.float64).tiny)


def _centred_gram(x: Tensor) -> Tensor:
    xc = x - x.mean(dim=0, keepdim=True)
    return xc @ xc.T


def pca_projector(gram: Tensor, dim: int) -> Tensor:
    """Projector onto the top-``dim`` eigenvectors of a centred Gram matrix (no gradient).

    Parameters
    ----------
    gram : Tensor
        ``(N, N)`` symmetric centred Gram matrix ``H X X^T H``.
    dim : int
        Manifold dimension ``d >= 1``; ``min(dim, N - 1)`` is used.

    Returns
    -------
    Tensor
        ``(N, N)`` orthogonal projector ``Q_d Q_d^T`` of Eq. 9-12 (zeros when ``N == 1``).
    """
    with torch.no_grad():
        n = gram.shape[0]
        d = min(dim, n - 1)
        if d < 1:
            return torch.zeros_like(gram)
        _, vectors = torch.linalg.eigh(_unit_scale(gram))
        q = vectors[:, -d:]
        return (q @ q.T).to(gram.dtype)


def ltsa_projector(gram: Tensor, dim: int, neighbors: int) -> Tensor:
    """Projector onto the LTSA coordinates of a batch, from its Gram matrix (no gradient).

    Local tangent space alignment (Zhang and Zha 2004; the paper's Eq. 16-23), as in
    ``sklearn.manifold.LocallyLinearEmbedding(method="ltsa")``: each sample's ``k`` nearest
    other samples, centred, give a local tangent basis (top-``d`` eigenvectors of their local
    Gram); ``B = sum_i S_i (I - G_i G_i^T) S_i^T`` with ``G_i = [1/sqrt(k), tangent basis]``
    aligns them, and the coordinates are the eigenvectors 2..d+1 of ``B`` (the first is the
    constant vector). Distances come from the Gram matrix, so the cost does not grow with the
    feature width.

    Parameters
    ----------
    gram : Tensor
        ``(N, N)`` Gram matrix ``X X^T`` (centred or not).
    dim : int
        ``d >= 1``; ``min(dim, k - 1)`` is used (``d + 1`` basis vectors must fit in a
        neighbourhood of ``k`` samples).
    neighbors : int
        ``k >= 2`` nearest neighbours; ``min(neighbors, N - 1)`` is used.

    Returns
    -------
    Tensor
        ``(N, N)`` orthogonal projector ``Y Y^T`` onto the LTSA coordinates (zeros when
        ``N <= 2``: no alignment is possible).
    """
    with torch.no_grad():
        n = gram.shape[0]
        k = min(neighbors, n - 1)
        d = min(dim, k - 1)
        if d < 1:
            return torch.zeros_like(gram)
        g = _unit_scale(gram)
        sq = g.diagonal()
        dist = sq[:, None] + sq[None, :] - 2 * g
        dist.fill_diagonal_(float("inf"))
        idx = dist.topk(k, dim=1, largest=False).indices  # (N, k)
        local = g[idx[:, :, None], idx[:, None, :]]  # (N, k, k)
        centre = torch.eye(k, dtype=g.dtype) - 1.0 / k
        _, vectors = torch.linalg.eigh(centre @ local @ centre)
        basis = torch.cat(
            [torch.full((n, k, 1), k**-0.5, dtype=g.dtype), vectors[:, :, -d:]], dim=2
        )
        weights = torch.eye(k, dtype=g.dtype) - basis @ basis.transpose(1, 2)
        align = torch.zeros_like(g)
        align.index_put_((idx[:, :, None], idx[:, None, :]), weights, accumulate=True)
        _, coords = torch.linalg.eigh((align + align.T) / 2)
        y = coords[:, 1 : d + 1]
        return (y @ y.T).to(gram.dtype)


def manifold_gram(
    features: Tensor, *, manifold: str = "linear", dim: int = 8, neighbors: int = 8
) -> Tensor:
    """The unit-norm manifold Gram matrix ``M = P K P / ||P K P||_F`` of a feature batch.

    Parameters
    ----------
    features : Tensor
        ``(N, ...)`` features of one stage (flattened per sample).
    manifold : str
        ``"linear"`` (PCA, Eq. 12) or ``"ltsa"`` (Eq. 16-23). Default ``"linear"``.
    dim : int
        Manifold dimension ``d >= 1``. Default 8.
    neighbors : int
        LTSA neighbourhood size ``k >= 1`` (ignored for ``"linear"``). Default 8.

    Returns
    -------
    Tensor
        ``(N, N)``; zeros when the batch has no spread. Differentiable in ``features`` with
        ``P`` held fixed (see the module docstring).
    """
    if manifold not in MANIFOLDS:
        raise ValueError(f"manifold must be one of {MANIFOLDS}, got {manifold!r}")
    for name, value in (("dim", dim), ("neighbors", neighbors)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    x = _flat("features", features)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("features contain NaN or inf: the network has diverged")
    k = _centred_gram(x)
    if manifold == "linear":
        p = pca_projector(k.detach(), dim)
    else:
        p = ltsa_projector((x @ x.T).detach(), dim, neighbors)
    m = p @ k @ p
    return m / torch.sqrt((m * m).sum() + _EPS)


def manifold_distance(
    student_features: Tensor,
    teacher_features: Tensor,
    *,
    manifold: str = "linear",
    dim: int = 8,
    neighbors: int = 8,
) -> Tensor:
    """``||M(f_t) - M(f_s)||_F^2`` of one stage; the teacher's features are detached.

    Parameters are those of :func:`manifold_gram`; the batch sizes must match (the widths need
    not). Returns a scalar in ``[0, 4]``.
    """
    s = _flat("student_features", student_features)
    t = _flat("teacher_features", teacher_features)
    if len(s) != len(t):
        raise ValueError(f"student batch {len(s)} does not match teacher batch {len(t)}")
    options = {"manifold": manifold, "dim": dim, "neighbors": neighbors}
    m_s = manifold_gram(s, **options)
    m_t = manifold_gram(t.detach(), **options)
    return ((m_t - m_s) ** 2).sum()


def _check_weight(name: str, value: float) -> float:
    if not is_finite_real(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def soft_target_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 4.0,
) -> Tensor:
    """ST (Hinton et al. 2015): ``alpha * CE(s, y) + beta * t^2 * KL(p_t || p_s)``.

    The first two terms of Eq. 3 (and the whole ST baseline). The teacher logits are detached;
    ``KL`` uses ``reduction="batchmean"`` and is scaled by ``t**2``
    (:func:`edgekd.losses.kd_kl_loss`).
    """
    check_logits("student_logits", student_logits)
    check_matching_logits("teacher_logits", teacher_logits, student_logits)
    alpha = _check_weight("alpha", alpha)
    beta = _check_weight("beta", beta)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * hard + beta * kd_kl_loss(student_logits, teacher_logits.detach(), temperature)


def nmd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    *,
    stage_weights: Sequence[float],
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 4.0,
    manifold: str = "linear",
    dim: int = 8,
    neighbors: int = 8,
) -> Tensor:
    """The NMD objective, Eq. 3: ST plus ``sum_j lambda_j`` manifold distances.

    Parameters
    ----------
    student_logits, teacher_logits : Tensor
        ``(B, C)`` logits (the teacher's are detached).
    labels : Tensor
        ``(B,)`` class indices.
    student_features, teacher_features : Sequence[Tensor]
        One ``(B, ...)`` tensor per residual stage, shallow first, equally many.
    stage_weights : Sequence[float]
        ``lambda_j >= 0``, one per stage (the paper: larger for shallow stages).
    alpha, beta, temperature : float
        Weights of the CE and KL terms and the softmax temperature (:func:`soft_target_loss`).
    manifold, dim, neighbors
        The manifold ``psi`` (:func:`manifold_gram`).

    Returns
    -------
    Tensor
        Scalar loss.
    """
    loss = soft_target_loss(
        student_logits,
        teacher_logits,
        labels,
        alpha=alpha,
        beta=beta,
        temperature=temperature,
    )
    return loss + manifold_term(
        student_features,
        teacher_features,
        stage_weights=stage_weights,
        manifold=manifold,
        dim=dim,
        neighbors=neighbors,
    )


def manifold_term(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    *,
    stage_weights: Sequence[float],
    manifold: str = "linear",
    dim: int = 8,
    neighbors: int = 8,
) -> Tensor:
    """The manifold part of Eq. 3: ``sum_j lambda_j * d(psi(f_j^t), psi(f_j^s))``.

    Parameters are those of :func:`nmd_loss`; stages with ``lambda_j = 0`` are not computed.
    Returns a scalar (0 when every weight is 0) on the student features' device.
    """
    if not len(student_features) == len(teacher_features) == len(stage_weights):
        raise ValueError(
            f"stage counts differ: {len(student_features)} student, "
            f"{len(teacher_features)} teacher features, {len(stage_weights)} stage_weights"
        )
    total = torch.zeros((), device=student_features[0].device if student_features else None)
    for j, (s, t, w) in enumerate(
        zip(student_features, teacher_features, stage_weights, strict=True)
    ):
        weight = _check_weight(f"stage_weights[{j}]", w)
        if weight:
            d = manifold_distance(s, t, manifold=manifold, dim=dim, neighbors=neighbors)
            total = total + weight * d
    return total
