"""Penultimate features from the model itself, in the same forward pass as the logits.

* timm models: ``forward_features`` then ``forward_head(pre_logits=True)`` (the pooled vector
  before the classifier), then the classifier; checked once against the plain forward.
* converted ONNX models (and any other net): a forward pre-hook on the final ``nn.Linear``
  captures its input.
* neither: the logits themselves, with a warning (an explicit ``--tail-penalty pairwise`` or
  ``reference`` is refused instead, since the penalty would not be the one asked for).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from audit.models import LoadedModel, PixelClassifier, final_linear_of

from .errors import RepairError

log = logging.getLogger(__name__)


class FeatureModel(nn.Module):
    """``forward(x)`` on [0, 1] pixels returns ``(features (B, D), logits (B, C))``.

    ``source`` is "timm-pre-logits", "final-linear-input" or "logits". Calling the wrapped
    :class:`PixelClassifier` directly (the attack does) still returns plain logits.
    """

    def __init__(self, pixel_model: PixelClassifier, source: str, linear: Optional[nn.Linear] = None) -> None:
        super().__init__()
        self.pixel_model = pixel_model
        self.source = source
        self._linear = linear
        self._captured: Optional[torch.Tensor] = None
        self._capture = False
        self._handle = None
        if source == "final-linear-input":
            assert linear is not None
            self._handle = linear.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple) -> None:
        if self._capture:
            self._captured = inputs[0]

    def remove(self) -> None:
        """Detach the hook (the model is exported or audited afterwards)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        pm = self.pixel_model
        if self.source == "timm-pre-logits":
            net = pm.net
            f = net.forward_head(net.forward_features(pm.normalise(x)), pre_logits=True)
            return f.flatten(1), pm.reorder(net.get_classifier()(f))  # --labels order, like pm(x)
        if self.source == "final-linear-input":
            self._capture = True
            try:
                logits = pm(x)
                f = self._captured
            finally:
                self._capture = False
                self._captured = None
            if f is None:
                raise RepairError("the final linear layer was not called during the forward pass; "
                                  "use --tail-penalty off for this model")
            return f.flatten(1), logits
        logits = pm(x)
        return logits, logits


def _timm_ok(pm: PixelClassifier, probe: torch.Tensor) -> bool:
    net = pm.net
    if not all(hasattr(net, a) for a in ("forward_features", "forward_head", "get_classifier")):
        return False
    try:
        with torch.no_grad():
            f = net.forward_head(net.forward_features(pm.normalise(probe)), pre_logits=True)
            clf = net.get_classifier()
            if not isinstance(clf, nn.Module) or f.dim() != 2:
                return False
            got, want = pm.reorder(clf(f)), pm(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        log.debug("timm pre-logits path fails: %s", exc)
        return False
    return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4,
                                                      atol=1e-5 * max(1.0, float(want.abs().max())))


def build_feature_model(loaded: LoadedModel, probe: torch.Tensor, *, explicit_penalty: Optional[str],
                        need_features: bool) -> tuple[FeatureModel, list[str]]:
    """Find the penultimate features of ``loaded`` (see module doc); returns the model and warnings.

    ``probe`` is a small batch of pixels to check the chosen path on (the model is in eval mode).
    Raises :class:`RepairError` when ``explicit_penalty`` is pairwise/reference and only the
    logits are available.
    """
    pm = loaded.module
    warnings: list[str] = []
    was_training = pm.training
    pm.eval()
    try:
        if loaded.format == "timm" and _timm_ok(pm, probe):
            return FeatureModel(pm, "timm-pre-logits"), warnings
        linear = final_linear_of(loaded)
        if linear is not None and linear.out_features == loaded.num_classes:
            fm = FeatureModel(pm, "final-linear-input", linear)
            with torch.no_grad():
                f, logits = fm(probe)
            if f.shape[0] == probe.shape[0] and f.dim() == 2 and f.shape[1] >= 2:
                return fm, warnings
            fm.remove()
    finally:
        pm.train(was_training)
    if need_features and explicit_penalty in ("pairwise", "reference"):
        raise RepairError(f"--tail-penalty {explicit_penalty} needs the model's penultimate features, but "
                          f"{loaded.spec} has no final linear layer to take them from; use --tail-penalty off "
                          "or --method at-bsl")
    if need_features:
        msg = (f"{loaded.spec} has no final linear layer: the tail feature penalty uses the logits instead of "
               "penultimate features (pass --tail-penalty off to train without it)")
        warnings.append(msg)
        log.warning("%s", msg)
    return FeatureModel(pm, "logits"), warnings
