"""Loss functions of the knowledge-distillation federated-learning methods, one module per paper.

* :mod:`~edgekd.losses.kd`: :func:`kd_kl_loss`, the temperature-scaled KL distillation term
  (Hinton et al. 2015);
* :mod:`~edgekd.losses.cloned_distillation`: :func:`cloned_distillation_loss`, cross-entropy
  plus the sum of KL terms to several teachers (cloned knowledge distillation, Eq. 1-2);
* :mod:`~edgekd.losses.fedmd`: :func:`consensus_logits`, :func:`fedmd_digest_loss` and
  :func:`latent_distillation_loss` (FedMD, Li and Wang 2019, and its latent variant);
* :mod:`~edgekd.losses.fedprox`: :func:`prox_term` (FedProx, Li et al. 2020);
* :mod:`~edgekd.losses.cloud_edge`: :func:`nmd_loss` (neuron manifold distillation, the
  cloud-edge paper's Eq. 3), its parts :func:`manifold_distance` and :func:`soft_target_loss`
  (ST, Hinton et al.);
* :mod:`~edgekd.losses.feature_kd`: the feature baselines :func:`attention_transfer_loss` (AT,
  Zagoruyko and Komodakis 2017) and :func:`fsp_loss` (FSP/Gram, Yim et al. 2017);
* :mod:`~edgekd.losses.ktg`: :class:`GateMatrix` and :func:`graph_losses` (knowledge transfer
  graph, Minami et al. 2020): each node's sum of gated CE and KL edges.
* :mod:`~edgekd.losses.layerwise_kt`: :func:`layerwise_kt_loss`, selective layer-wise knowledge
  transfer to a pruned student (Zhao, Chen and Zhao 2022).

All KL terms use ``reduction="batchmean"`` (sum over classes, mean over the batch) and are
multiplied by ``t**2`` so that gradient magnitudes do not depend on the temperature.

Targets (teacher logits, consensus scores, target representations) are used as given: gradients
flow into them if they require grad, so pass detached tensors for frozen teachers.
A new method adds one module here and re-exports its loss below.
"""

from __future__ import annotations

from edgekd.losses.cloned_distillation import cloned_distillation_loss
from edgekd.losses.cloud_edge import manifold_distance, manifold_term, nmd_loss, soft_target_loss
from edgekd.losses.feature_kd import attention_transfer_loss, fsp_loss
from edgekd.losses.fedmd import consensus_logits, fedmd_digest_loss, latent_distillation_loss
from edgekd.losses.fedprox import prox_term
from edgekd.losses.kd import kd_kl_loss
from edgekd.losses.ktg import Gate, GateMatrix, GateMatrixError, graph_losses
from edgekd.losses.layerwise_kt import layerwise_kt_loss

__all__ = [
    "Gate",
    "GateMatrix",
    "GateMatrixError",
    "attention_transfer_loss",
    "cloned_distillation_loss",
    "consensus_logits",
    "fedmd_digest_loss",
    "fsp_loss",
    "graph_losses",
    "kd_kl_loss",
    "latent_distillation_loss",
    "layerwise_kt_loss",
    "manifold_distance",
    "manifold_term",
    "nmd_loss",
    "prox_term",
    "soft_target_loss",
]
