"""Trainable heads swapped in for the model's final linear layer, and folded back into one at export.

* :class:`ScaledLinear` (MiSLAS): the user's linear layer with a learnable scale per class on its
  output, ``s_c * (W x + b)_c``; folds into ``W' = diag(s) W``, ``b' = s * b``.
* :class:`ResLTHead` (ResLT): three branches with their own BatchNorm on the features, H (all
  classes), M (medium + tail), T (tail), sharing the linear layer, fused by addition:
  ``W BN_H(f) + W BN_M(f) + W BN_T(f) + 3 b``. In eval mode each BatchNorm is ``a * f + c`` per
  feature, so the fused head folds exactly into ``W' = W diag(a_H + a_M + a_T)``,
  ``b' = W (c_H + c_M + c_T) + 3 b``.

Either way the exported network has the input's architecture (one Linear, no new operators).
:func:`shift_batchnorm` re-estimates BatchNorm statistics on class-balanced clean batches
(MiSLAS's shifted BN).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .errors import RepairError


def _locate(net: nn.Module, linear: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of ``linear`` inside ``net``."""
    for name, mod in net.named_modules():
        if mod is linear and name:
            parent_name, _, attr = name.rpartition(".")
            return (net.get_submodule(parent_name) if parent_name else net), attr
    raise RepairError("the final linear layer could not be located in the network to swap its head")


def require_linear(linear: Optional[nn.Linear], method: str) -> nn.Linear:
    """``linear``, or the RepairError of a head method on a model without a final linear layer."""
    if linear is None:
        raise RepairError(f"--method {method} trains a head on the model's final linear layer, and this model has "
                          "none the repair can find (a Gemm/MatMul classifier, or no classifier layer); use "
                          "another --method")
    return linear


def swap_head(net: nn.Module, linear: Optional[nn.Linear], make: Callable[[nn.Linear], nn.Module],
              method: str) -> nn.Module:
    """Replace the final linear layer by ``make(linear)``; returns the new head (RepairError without one)."""
    linear = require_linear(linear, method)
    parent, attr = _locate(net, linear)
    head = make(linear)
    setattr(parent, attr, head)
    head.tailaudit_slot = (parent, attr)  # type: ignore[attr-defined]
    return head


def fold_head(head: nn.Module) -> nn.Linear:
    """Put one ``nn.Linear`` with the head's eval-mode function back where the head sits; returns it."""
    parent, attr = head.tailaudit_slot  # type: ignore[attr-defined]
    w, b = head.folded()  # type: ignore[operator]
    lin = nn.Linear(w.shape[1], w.shape[0]).to(w.device)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    setattr(parent, attr, lin)
    return lin


class ScaledLinear(nn.Module):
    """``s * linear(x)`` with a learnable per-class scale ``s`` (MiSLAS's learnable weight scaling), ``s = 1`` at
    start."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.scale = nn.Parameter(torch.ones(linear.out_features, device=linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.linear(x) * self.scale

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.linear.bias if self.linear.bias is not None else torch.zeros_like(self.scale)
        return self.linear.weight * self.scale[:, None], b * self.scale


class ResLTHead(nn.Module):
    """Three BatchNorm branches on the features sharing ``linear``; ``last_branch_logits`` keeps the last forward's.

    Initialised so that the fused head computes the input model's logits: each branch's
    BatchNorm starts at the features' own statistics (``stats``: mean, var) scaled by 1/3, and
    the shared bias at 1/3 of the original (the fused head adds it three times).
    """

    def __init__(self, linear: nn.Linear, stats: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.linear = linear
        d = linear.in_features
        dev = linear.weight.device
        mean, var = stats
        self.branches = nn.ModuleList(nn.BatchNorm1d(d).to(dev) for _ in range(3))
        with torch.no_grad():
            std = (var + self.branches[0].eps).sqrt()
            for bn in self.branches:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.weight.copy_(std / 3)
                bn.bias.copy_(mean / 3)
            if linear.bias is not None:
                linear.bias.mul_(1 / 3)
        self.last_branch_logits: Optional[list[torch.Tensor]] = None

    def forward(self, f: torch.Tensor) -> torch.Tensor:  # noqa: D102
        shape = f.shape
        flat = f.reshape(-1, shape[-1])
        z = [self.linear(bn(flat)) for bn in self.branches]
        self.last_branch_logits = z
        return (z[0] + z[1] + z[2]).reshape(*shape[:-1], -1)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.zeros_like(self.branches[0].running_mean)
        c = torch.zeros_like(a)
        for bn in self.branches:
            ab = bn.weight / (bn.running_var + bn.eps).sqrt()
            a += ab
            c += bn.bias - ab * bn.running_mean
        w = self.linear.weight
        b = self.linear.bias if self.linear.bias is not None else torch.zeros(w.shape[0], device=w.device)
        return w * a[None, :], w @ c + 3 * b


@torch.no_grad()
def feature_stats(net_forward: Callable[[torch.Tensor], torch.Tensor], linear: nn.Linear,
                  batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the final linear layer's input over ``batches`` (forward pre-hook)."""
    seen: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
    try:
        for x in batches:
            net_forward(x)
    finally:
        handle.remove()
    f = torch.cat(seen)
    return f.mean(0), f.var(0, unbiased=False)


@torch.no_grad()
def shift_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (cumulative average); returns how many."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.eval()
    for m in bns:
        m.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
        model.train(was)
    return len(bns)
