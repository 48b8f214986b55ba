"""REAT's losses (docs/repair.md), vectorised over the batch.

* :func:`rbl_weights`: effective-number class weights from the previous epoch's adversarial
  prediction counts. With sign steps (L-inf PGD) or per-sample normalised steps (L2 PGD) a
  positive per-sample weight leaves every step unchanged, so the training attack skips it
  (:class:`RBLWeightedPGD` is the literal form, kept to prove the equivalence in the tests).
* :func:`balanced_softmax_loss`: ``CE(logits + log N, y)``.
* :func:`tail_penalty_pairwise` (ours, per pair) and :func:`tail_penalty_reference` (the
  reference code's scalar-collapsed form).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from audit.attacks import PGD


def _counts_tensor(counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(counts, dtype=torch.float64).flatten()


def effective_number(train_counts: Sequence[float] | torch.Tensor,
                     adv_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``E_i = (1 - beta_i ** n_i) / (1 - beta_i)`` with ``beta_i = (N_i - 1) / N_i`` (float64).

    ``N_i`` = training count (at least 1), ``n_i`` = adversarial predictions of class i.
    Written as ``N (1 - beta ** n)``, which is the same and exact for ``N_i = 1`` (``E = 1``
    for ``n >= 1``).
    """
    N = _counts_tensor(train_counts).clamp_min(1.0)
    n = _counts_tensor(adv_counts).clamp_min(0.0)
    beta = (N - 1.0) / N
    return N * (1.0 - beta.pow(n))


def rbl_weights(train_counts: Sequence[float] | torch.Tensor, adv_counts: Sequence[float] | torch.Tensor,
                eps: float = 1e-5) -> torch.Tensor:
    """RBL class weights ``w_i = 1 / E_i`` normalised to sum to ``C`` (float32).

    ``eps`` (as in the reference code) keeps a class no adversarial example was predicted
    as (``n_i = 0``, ``E_i = 0``) finite: it gets by far the largest weight.
    """
    w = 1.0 / (effective_number(train_counts, adv_counts) + eps)
    return (w / w.sum() * w.numel()).float()


def log_prior(train_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``log N`` per class (counts below 1 count as 1, as in the reference code)."""
    return _counts_tensor(train_counts).clamp_min(1.0).log().float()


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, log_n: torch.Tensor,
                          reduction: str = "mean") -> torch.Tensor:
    """Balanced Softmax: cross-entropy of ``logits + log N`` (Ren et al. 2020; AT-BSL's outer loss)."""
    return F.cross_entropy(logits.float() + log_n.to(logits.device), y, reduction=reduction)


def tail_class_weights(train_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``v_c = sqrt(sum(N) / N_c)`` (float32)."""
    N = _counts_tensor(train_counts).clamp_min(1.0)
    return (N.sum() / N).sqrt().float()


def _pair_kl(f: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``KL(q_a || softmax(f_j))`` for every anchor a (rows) and point j (columns); q_a detached.

    ``sum_d q_a (log q_a - log p_j)`` = ``<q_a, log q_a> - q_a @ log p_j^T``: one matmul.
    """
    logp = F.log_softmax(f.float(), dim=1)
    logq = logp[anchors].detach()
    q = logq.exp()
    return (q * logq).sum(1, keepdim=True) - q @ logp.t()


def tail_penalty_pairwise(features: torch.Tensor, y: torch.Tensor, is_tail: torch.Tensor, v: torch.Tensor,
                          margin: float) -> torch.Tensor:
    """Pull same-class pairs together, push different-class pairs apart up to ``margin``, tail anchors only.

    For each anchor a with a tail label and each other point j of the batch:
    ``(v[y_a] + v[y_j]) * (KL_aj if y_a == y_j else max(0, margin - KL_aj))``, averaged over
    the ``B - 1`` pairs of each anchor and over anchors. Zero (with a graph) when the batch
    has no tail point or only one point.
    """
    B = features.shape[0]
    anchors = torch.nonzero(is_tail.to(y.device)[y], as_tuple=False).flatten()
    if anchors.numel() == 0 or B < 2:
        return features.float().sum() * 0.0
    kl = _pair_kl(features.flatten(1), anchors)
    ya = y[anchors]
    same = ya[:, None] == y[None, :]
    v = v.to(features.device)
    w = v[ya][:, None] + v[y][None, :]
    term = torch.where(same, kl, F.relu(margin - kl)) * w
    not_self = anchors[:, None] != torch.arange(B, device=y.device)[None, :]
    return (term * not_self).sum() / (anchors.numel() * (B - 1))


def tail_penalty_reference(features: torch.Tensor, y: torch.Tensor, is_tail: torch.Tensor,
                           v: torch.Tensor) -> torch.Tensor:
    """The reference code's penalty, vectorised, including its defects.

    Its ``KLDivLoss(size_average='none')`` takes PyTorch's legacy path and returns the mean
    of all ``B x D`` elements, one scalar ``s_a`` per anchor; that scalar times the vector
    ``idt_aj * W_aj`` (``idt`` = -1 same class, +1 otherwise) is summed over anchors, then
    averaged over the batch and divided by the anchor count:
    ``sum_a s_a * sum_j idt_aj W_aj / (A * B)``. The per-pair signs collapse into one
    coefficient per anchor, and same-class pairs carry the minus sign (pushed apart).
    """
    B, D = features.shape[0], features.flatten(1).shape[1]
    anchors = torch.nonzero(is_tail.to(y.device)[y], as_tuple=False).flatten()
    if anchors.numel() == 0:
        return features.float().sum() * 0.0
    kl = _pair_kl(features.flatten(1), anchors)
    s = kl.sum(1) / (B * D)
    ya = y[anchors]
    v = v.to(features.device)
    idt = torch.where(ya[:, None] == y[None, :], -1.0, 1.0)
    coef = (idt * (v[ya][:, None] + v[y][None, :])).sum(1)
    return (s * coef).sum() / (anchors.numel() * B)


class RBLWeightedPGD(PGD):
    """PGD ascending the RBL-weighted cross-entropy ``w[y] * CE`` (the literal REAT inner loss).

    Training does not use it: under sign (L-inf) or per-sample normalised (L2) steps it
    produces exactly the plain-CE adversarial examples (see tests/test_repair.py).
    """

    def __init__(self, spec, class_weights: torch.Tensor) -> None:  # noqa: ANN001 - AttackSpec
        super().__init__(spec)
        self.class_weights = class_weights

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(logits.device)[y]
        return w * F.cross_entropy(logits, y, reduction="none")


class KLAttack(PGD):
    """PGD ascending ``KL(reference || softmax(logits))`` per sample: TRADES' inner maximisation.

    ``reference`` (B, C) holds the clean predictive distribution of the batch being attacked
    (set before each attack, rows aligned with the batch); the random start in the ball
    gives the ascent a non-zero gradient (the KL and its gradient vanish at the clean point).
    """

    reference: torch.Tensor

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.reference.to(logits.device)
        return (p * (p.clamp_min(1e-12).log() - F.log_softmax(logits.float(), 1))).sum(1)
