"""MiSLAS's label-aware smoothing (Zhong et al. 2021), usable with every method's label loss.

With ``N_1`` the largest and ``N_K`` the smallest training count and ``u = (N_y - N_K) / (N_1 - N_K)``,
class ``y`` is smoothed by ``eps_y = eps_K + (eps_1 - eps_K) * sin(pi u / 2)`` (concave, the
default), ``* u`` (linear) or ``eps_1 + (eps_1 - eps_K) * sin(3 pi / 2 + pi u / 2)`` (convex):
frequent classes, on which long-tailed models are over-confident, get more smoothing. The loss
is ``(1 - eps_y) * (-log p_y) + eps_y * mean_k(-log p_k)`` (the smoothing mass spread over all
classes, y included, as in the MiSLAS code).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SHAPES = ("concave", "linear", "convex")


def label_aware_eps(counts: Sequence[int], head: float, tail: float, shape: str = "concave") -> torch.Tensor:
    """Per-class smoothing ``eps_y`` from the training counts (``head`` for the largest class, ``tail`` the
    smallest)."""
    n = torch.as_tensor([float(c) for c in counts], dtype=torch.float64)
    span = float(n.max() - n.min())
    u = (n - n.min()) / span if span > 0 else torch.ones_like(n)
    if shape == "concave":
        eps = tail + (head - tail) * torch.sin(math.pi * u / 2)
    elif shape == "linear":
        eps = tail + (head - tail) * u
    elif shape == "convex":
        eps = head + (head - tail) * torch.sin(3 * math.pi / 2 + math.pi * u / 2)
    else:
        raise ValueError(f"unknown smoothing shape {shape!r}")
    return eps.clamp(0.0, 1.0).float()


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, eps_per_class: torch.Tensor) -> torch.Tensor:
    """Mean of ``(1 - eps_y) * CE + eps_y * mean_k(-log p_k)`` over the batch."""
    logp = F.log_softmax(logits.float(), dim=1)
    e = eps_per_class.to(logits.device)[y]
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    return ((1 - e) * nll + e * (-logp.mean(1))).mean()
