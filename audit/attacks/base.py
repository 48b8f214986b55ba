"""The one attack contract shared by the audit and by repair's training loop.

Every attack is a class registered with ``@register_attack`` that declares:

* ``display_name``: how reports and the CLI name it;
* ``Params``: a small frozen dataclass of its own parameters (defaults and documented upper
  bounds); the generic :class:`~audit.config.AttackSpec` only carries kind, name, norm, eps
  and that params object;
* ``gradient_free``: True for score-based attacks (they only need pixels -> logits, so they
  run on a reference scorer such as onnxruntime when there is one);
* the public interface :meth:`Attack.run` (the audit: per-point early stop, first fooling
  iterate) and :meth:`Attack.perturb` (training: the final iterate, no early stop).

Inputs and outputs are NCHW pixels in [0, 1]; all randomness comes from the ``noise`` object
(one stream per point, :mod:`.noise`).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from ..values import AttackSpec
from ..errors import ConfigError
from .noise import Noise

Autocast = Optional[Callable[[], contextlib.AbstractContextManager]]
# What an attack queries: an nn.Module (white-box) or any pixels -> logits callable (score-based).
Classifier = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackParams:
    """Base of every attack's parameter dataclass.

    ``bounds`` maps a field to (lowest, highest, CLI flag): :meth:`validate` refuses values
    outside with one line. The highest values are documented upper bounds on the budget.
    """

    bounds: ClassVar[dict[str, tuple[float, float, str]]] = {}

    def validate(self, attack: str) -> None:
        """Raise :class:`ConfigError` for a value outside its documented bounds."""
        for name, (lo, hi, flag) in self.bounds.items():
            v = getattr(self, name)
            if v is None:
                continue
            if not (lo <= v <= hi):
                raise ConfigError(f"{flag} for {attack} must be between {lo:g} and {hi:g} (documented bound), "
                                  f"got {v:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass
class AttackOutcome:
    """Per-point result of one attack on a batch.

    ``step`` is the iteration (query, for score-based attacks) at which the point first fooled
    the model (0 = the starting point) or -1; ``pred`` is the prediction at ``x_adv``;
    ``x_adv`` holds the first fooling iterate, else the attack's final (highest-loss) iterate.
    ``zero_grad`` marks points whose input gradient was exactly zero at the first step.
    ``carried_on`` (Square with a probe) marks points that went on past the probe to the full
    budget; None when the attack has no probe. ``min_margin`` (gradient attacks) is the lowest
    :func:`logit_margin` seen at any iterate, what Square's probe has to beat. ``reran`` (Square
    with ``reruns``) marks points that got the extra independent runs; None when it has none.
    """

    x_adv: torch.Tensor
    pred: torch.Tensor
    step: torch.Tensor
    zero_grad_mask: torch.Tensor
    forwards: int
    carried_on: Optional[torch.Tensor] = None
    min_margin: Optional[torch.Tensor] = None
    reran: Optional[torch.Tensor] = None

    @property
    def zero_grad(self) -> int:
        """How many points had an exactly zero input gradient at the first step."""
        return int(self.zero_grad_mask.sum())


class Attack:
    """Base class of every attack (see the module docstring for the contract)."""

    display_name: ClassVar[str] = "attack"
    Params: ClassVar[type] = AttackParams
    gradient_free: ClassVar[bool] = False

    def __init__(self, spec: AttackSpec) -> None:
        self.spec = spec
        params = spec.params if spec.params is not None else self.Params()
        if not isinstance(params, self.Params):
            raise ConfigError(f"{spec.kind} takes {self.Params.__name__} parameters, got {type(params).__name__}")
        params.validate(spec.kind)
        self.params = params

    @property
    def budget(self) -> int:
        """The largest ``step`` a point can be broken at (iterations or queries)."""
        return int(getattr(self.params, "steps", 0))

    def label(self) -> str:
        """Display name with its budget, e.g. 'APGD-CE-100'."""
        return self.display_name

    def run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, *, noise: Noise, early_stop: bool = True,
            autocast: Autocast = None, margin_to_beat: Optional[torch.Tensor] = None) -> AttackOutcome:
        """Attack ``x`` (labels ``y``) for the audit; ``model`` maps pixels to logits and is in eval mode.

        With ``early_stop`` a point leaves the attack the moment it is first fooled.
        ``margin_to_beat`` is, per point, the lowest margin (true-class logit minus the best other
        logit) the earlier gradient attacks of the cascade reached, or None; an attack may use it
        to decide where to spend its budget (Square's probe), never to decide a verdict.
        """
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise,
                autocast: Autocast = None) -> torch.Tensor:
        """Adversarial examples for training: the final iterate, no early stop, eval-mode model."""
        raise NotImplementedError


# -- geometry shared by the gradient attacks ------------------------------------------------

def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point, the true-class logit minus the best other logit (negative = misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def view_rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-point vector to broadcast against an N×... tensor."""
    return v.view(-1, *[1] * (like.dim() - 1))


def project(x_new: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the eps-ball around ``x0`` (L-inf or L2), then onto the pixel box [0, 1]."""
    if norm == "linf":
        x_new = torch.min(torch.max(x_new, x0 - eps), x0 + eps)
    else:
        delta = x_new - x0
        d_norm = view_rows(delta.flatten(1).norm(dim=1), delta)
        delta = delta * torch.where(d_norm > eps, eps / d_norm.clamp_min(1e-12), torch.ones_like(d_norm))
        x_new = x0 + delta
    return x_new.clamp(0, 1)


def random_start(x: torch.Tensor, eps: float, norm: str, noise: Noise) -> torch.Tensor:
    """A uniform point of the L-inf ball, or a point of the L2 ball with uniform radius, in [0, 1]."""
    if eps == 0:
        return x.clone()
    shape = tuple(x.shape[1:])
    if norm == "linf":
        delta = (noise.rand(shape, dtype=x.dtype).to(x.device) * 2 - 1) * eps
    else:
        d = noise.randn(shape, dtype=x.dtype).to(x.device)
        norms = view_rows(d.flatten(1).norm(dim=1).clamp_min(1e-12), d)
        r = noise.rand((1,) * (x.dim() - 1), dtype=x.dtype).to(x.device)
        delta = d / norms * r * eps
    return (x + delta).clamp_(0, 1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit size: sign (L-inf) or the normalised gradient (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / view_rows(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
