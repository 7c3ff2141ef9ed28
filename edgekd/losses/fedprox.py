"""FedProx's proximal term.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
https://arxiv.org/abs/1812.06127.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgekd.losses.checks import is_finite_real

__all__ = ["prox_term"]


def prox_term(model: nn.Module, global_params: Sequence[Tensor], mu: float) -> Tensor:
    """FedProx proximal term ``mu / 2 * sum ||w - w_g||^2``.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.

    Parameters
    ----------
    model : nn.Module
        Local model; all of ``model.parameters()`` are used, in order.
    global_params : sequence of Tensor
        Global parameters ``w_g`` in the same order and shapes as ``model.parameters()``. They
        are treated as constants (detached).
    mu : float
        Proximal coefficient, finite and ``>= 0``.

    Returns
    -------
    Tensor
        Scalar term, differentiable with respect to the model parameters.

    Raises
    ------
    ValueError
        If ``mu`` is negative or non-finite, or ``global_params`` does not match the model's
        parameters in number or shape.
    """
    if not is_finite_real(mu) or mu < 0:
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    params = list(model.parameters())
    global_list = list(global_params)
    if len(global_list) != len(params):
        raise ValueError(
            f"global_params has {len(global_list)} tensors but the model has {len(params)} "
            "parameters"
        )
    if not params:
        return torch.zeros(())
    total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    for i, (w, w_g) in enumerate(zip(params, global_list, strict=True)):
        w_g_t = torch.as_tensor(w_g)
        if w_g_t.shape != w.shape:
            raise ValueError(
                f"global_params[{i}] has shape {tuple(w_g_t.shape)}, expected {tuple(w.shape)}"
            )
        diff = w - w_g_t.detach().to(device=w.device, dtype=w.dtype)
        total = total + diff.pow(2).sum()
    return 0.5 * mu * total
