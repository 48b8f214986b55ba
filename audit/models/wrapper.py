"""The one choke point that turns [0, 1] pixels into logits.

Every attack and metric calls :class:`PixelClassifier`: normalisation (mean/std) and the
input layout (NCHW or NHWC) live here, never in the data or the attack.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class Preprocessing:
    """What the wrapped network expects, so the attack can work on raw pixels.

    ``mean``/``std`` are applied inside the wrapper (``None`` = the network takes [0, 1]
    pixels). ``input_size`` is (C, H, W) of the pixels the wrapper takes; ``layout`` is the
    layout of the tensor handed to the inner network ("NCHW" or "NHWC").
    """

    input_size: tuple[int, int, int]
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean) if self.mean is not None else None
        d["std"] = list(self.std) if self.std is not None else None
        return d

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """Normalise and re-lay out a float32 NCHW pixel batch for a non-torch runtime."""
        x = x.astype(np.float32, copy=True)
        if self.mean is not None:
            mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
            x = (x - mean) / std
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return x


class PixelClassifier(nn.Module):
    """Wraps a network so that ``forward`` takes NCHW pixels in [0, 1] and returns logits."""

    def __init__(self, net: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.net = net
        self.preprocessing = preprocessing
        c = preprocessing.input_size[0]
        if preprocessing.mean is not None:
            if preprocessing.std is None or len(preprocessing.mean) != len(preprocessing.std):
                raise ValueError("mean and std must both be given, with the same length")
            mean = torch.tensor(preprocessing.mean, dtype=torch.float32).reshape(1, -1, 1, 1)
            std = torch.tensor(preprocessing.std, dtype=torch.float32).reshape(1, -1, 1, 1)
            if mean.shape[1] not in (1, c):
                raise ValueError(f"mean has {mean.shape[1]} values but the model takes {c} channels")
        else:
            mean = torch.zeros(1, 1, 1, 1)
            std = torch.ones(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.output_order: Optional[torch.Tensor] = None

    def set_output_order(self, order: Optional[Sequence[int]]) -> None:
        """Re-order the logits: column ``c`` of the output becomes the network's output ``order[c]``.

        Set from ``--labels`` so that the dataset's class ``c`` and logit ``c`` mean the same class
        everywhere (attacks, metrics, onnxruntime re-scoring); ``None`` keeps the network's order.
        """
        if order is None:
            self.output_order = None
            return
        self.output_order = torch.as_tensor(list(order), dtype=torch.long)

    def reorder(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply :meth:`set_output_order` to logits computed by ``self.net`` directly."""
        if self.output_order is None:
            return logits
        if self.output_order.device != logits.device:
            self.output_order = self.output_order.to(logits.device)
        return logits.index_select(1, self.output_order)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input: normalised, in its layout, and never ``x`` itself (a network that writes into
        its input changes a copy, not the attack's or the engine's images)."""
        z = (x - self.mean) / self.std if self.preprocessing.mean is not None else x
        if self.preprocessing.layout == "NHWC":
            z = z.permute(0, 2, 3, 1)
        return z.clone() if z.data_ptr() == x.data_ptr() else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.reorder(logits_of(self.net(self.normalise(x))))


LOGITS_KEY = "logits"


def output_rule(out: Any) -> Optional[str]:
    """How :func:`logits_of` reads a network's output: None for a tensor, "first" for a tuple or list whose first
    element is a tensor, "logits" for a mapping with a ``logits`` tensor (Hugging Face's outputs); ValueError
    naming the output's type otherwise."""
    if isinstance(out, torch.Tensor):
        return None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return "first"
    if isinstance(out, Mapping) and isinstance(out.get(LOGITS_KEY), torch.Tensor):
        return "logits"
    what = f"a {type(out).__name__}" + (" without a 'logits' tensor" if isinstance(out, Mapping) else
                                        " whose first element is not a tensor" if isinstance(out, (tuple, list))
                                        else "")
    raise ValueError(what)


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a network's output: the tensor itself, the first element of a tuple ``(logits, features)``
    or the ``logits`` entry of a dict (docs/python_api.md); ValueError for anything else."""
    rule = output_rule(out)
    return out if rule is None else out[0] if rule == "first" else out[LOGITS_KEY]


def check_norm_channels(mean: Optional[Sequence[float]], std: Optional[Sequence[float]], channels: int,
                        model: str) -> None:
    """ConfigError unless --mean/--std give one value, or one per input channel of the model."""
    from ..errors import ConfigError

    for what, vals in (("--mean", mean), ("--std", std)):
        if vals is not None and len(vals) not in (1, channels):
            raise ConfigError(f"{what} has {len(vals)} values but {model} takes {channels}-channel images; "
                              f"give {channels} value{'s' if channels > 1 else ''} (one per channel)")


# A scorer maps float32 NCHW pixels in [0, 1] (numpy) to float32 logits (numpy).
Scorer = Callable[[np.ndarray], np.ndarray]


class ReorderedScorer:
    """A reference scorer whose logit columns are re-ordered like :meth:`PixelClassifier.set_output_order`."""

    def __init__(self, scorer: Scorer, order: Sequence[int]) -> None:
        self.scorer = scorer
        self.order = np.asarray(list(order), dtype=np.int64)

    @property
    def providers(self) -> Any:
        return getattr(self.scorer, "providers", None)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        logits = np.asarray(self.scorer(pixels))
        return logits[:, self.order] if logits.ndim == 2 and logits.shape[1] == len(self.order) else logits


@dataclass
class LoadedModel:
    """A model ready for auditing, plus everything the results must say about it."""

    module: PixelClassifier
    spec: str
    format: str  # "timm" | "onnx" | "torch"
    num_classes: int
    preprocessing: Preprocessing
    path: Optional[Path] = None
    sha256: Optional[str] = None
    arch: Optional[str] = None
    # For ONNX models: onnxruntime re-scores clean and adversarial points.
    reference_scorer: Optional[Scorer] = None
    parity: Optional[dict[str, Any]] = None
    info: dict[str, Any] = field(default_factory=dict)
    # False in black-box mode: ``module`` is the reference scorer, only score-based attacks apply
    gradient_access: bool = True
    # For converted ONNX models: where each trainable tensor sits in the input file (audit.models.onnx_weights)
    weights: Optional[Any] = None

    def apply_output_order(self, order: Optional[Sequence[int]]) -> None:
        """Re-order the outputs of the module and of the reference scorer alike (``--labels``)."""
        if order is None or list(order) == list(range(self.num_classes)):
            return
        self.module.set_output_order(order)
        if self.reference_scorer is not None:
            self.reference_scorer = ReorderedScorer(self.reference_scorer, order)
        self.info["output_order"] = [int(i) for i in order]

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "format": self.format,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "parity": self.parity,
            "gradient_access": self.gradient_access,
            "info": self.info,
        }


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def parse_floats(text: str | Sequence[float] | None, what: str) -> Optional[tuple[float, ...]]:
    """Parse "0.5,0.5,0.5" into floats, with a clear error for non-numbers."""
    from ..errors import ConfigError

    if text is None:
        return None
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"{what} is empty; give comma-separated numbers such as 0.5,0.5,0.5")
    return vals


class ScorerClassifier(nn.Module):
    """A reference scorer (numpy pixels -> numpy logits, e.g. onnxruntime) as a torch callable.

    Score-based attacks query it directly (no gradients); black-box mode uses it as the model.
    """

    def __init__(self, scorer: Scorer, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.scorer = scorer
        self.device = torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logits = self.scorer(x.detach().float().cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(x.device)
