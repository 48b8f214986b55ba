"""Model loading: ``timm:ARCH`` with a checkpoint, or an ONNX file, into a :class:`LoadedModel`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ModelLoadError
from .module import wrap_module
from .sanity import check_finite_logits, check_finite_weights
from .wrapper import LoadedModel, PixelClassifier, Preprocessing, parse_floats, sha256_of


def load_model(
    spec: str | nn.Module | LoadedModel,
    *,
    num_classes: int,
    checkpoint: Optional[str] = None,
    mean: Optional[tuple[float, ...]] = None,
    std: Optional[tuple[float, ...]] = None,
    input_size: Optional[int] = None,
    data_size: Optional[tuple[int, int, int]] = None,
    device: torch.device | str = "cpu",
    allow_large_input: bool = False,
    black_box: bool = False,
    pretrained: bool = False,
) -> LoadedModel:
    """Load ``timm:ARCH`` (with ``checkpoint``) or ``path/to/model.onnx`` for auditing; an ``nn.Module``
    from Python is copied and wrapped (:mod:`.module`), a :class:`LoadedModel` is used as it is.

    ``black_box`` (ONNX only) skips the conversion: onnxruntime alone, for score-based attacks.
    ``pretrained`` (timm only, no checkpoint): the hub's weights, with the hub's class count.
    """
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, nn.Module):
        if checkpoint:
            raise ModelLoadError("checkpoint= goes with timm:ARCH models; load the weights into your module first")
        loaded = wrap_module(spec, mean=mean, std=std, input_size=input_size,
                             data_size=data_size or (3, 32, 32), device=device)
        check_finite_weights(loaded)
        return loaded
    if spec.startswith("timm:"):
        from .timm_model import load_timm

        loaded = load_timm(spec[5:], checkpoint, num_classes=num_classes, mean=mean, std=std,
                           input_size=input_size, data_size=data_size, device=device,
                           allow_large_input=allow_large_input, pretrained=pretrained)
        check_finite_weights(loaded)
        return loaded
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(f"model file {spec} not found; pass an .onnx file or timm:ARCH --checkpoint FILE")
    if path.is_dir():
        raise ModelLoadError(f"model {spec} is a folder; pass an .onnx file or timm:ARCH --checkpoint FILE")
    if checkpoint:
        raise ModelLoadError("--checkpoint goes with timm:ARCH models; an ONNX file carries its own weights")
    if path.suffix.lower() in (".pth", ".pt", ".safetensors", ".bin", ".ckpt"):
        raise ModelLoadError(
            f"{spec} looks like a checkpoint; pass it as timm:ARCH --checkpoint {spec} (e.g. timm:resnet18)"
        )
    from .onnx_model import load_onnx

    loaded = load_onnx(path, num_classes=num_classes, mean=mean, std=std, device=device,
                       allow_large_input=allow_large_input, black_box=black_box)
    loaded.spec = spec
    check_finite_weights(loaded)
    return loaded


def final_linear_of(loaded: LoadedModel) -> Optional[nn.Linear]:
    """The classifier's last linear layer (for weight norms and penultimate features), if any."""
    if not loaded.gradient_access:
        return None
    net = loaded.module.net
    if loaded.format == "timm":
        from .timm_model import final_linear

        return final_linear(net)
    if loaded.format == "torch":
        from .module import final_linear as module_linear

        return module_linear(net)
    from .onnx_model import find_final_linear

    return find_final_linear(net)


# -- the model formats, for callers that write models back (the repair's export): thin faces over .onnx_*,
# .timm_model, imported when called so that loading the package pulls in neither onnx nor timm


def load_onnx(path: str | Path, **options: Any) -> LoadedModel:
    """An ONNX classifier converted for auditing, onnxruntime its reference scorer (:func:`.onnx_model.load_onnx`)."""
    from .onnx_model import load_onnx as load

    return load(path, **options)


def load_timm(arch: str, checkpoint: Optional[str | Path], **options: Any) -> LoadedModel:
    """``timm:ARCH`` with a checkpoint (:func:`.timm_model.load_timm`)."""
    from .timm_model import load_timm as load

    return load(arch, checkpoint, **options)


def check_parity(model: LoadedModel, images: torch.Tensor, *, tol: float = 1e-3) -> dict[str, Any]:
    """The converted module against onnxruntime on ``images``; ParityError beyond ``tol`` (:mod:`.onnx_model`)."""
    from .onnx_model import check_parity as check

    return check(model, images, tol=tol)


def check_archive_size(path: Path) -> None:
    """Refuse a zip checkpoint whose entries declare far more bytes than the file, before torch unpacks it."""
    from .timm_model import check_archive_size as check

    check(path)


def converted_network(loaded: LoadedModel) -> tuple[nn.Module, bool]:
    """The network inside the wrapper (itself, not a copy) and whether it runs one image at a time (an ONNX
    file whose batch is fixed to 1)."""
    from .onnx_model import _PerSample

    net = loaded.module.net
    return (net.net, True) if isinstance(net, _PerSample) else (net, False)


def onnx_input_shape(value: Any) -> Optional[list[Optional[int]]]:
    """Dims of an ONNX tensor value (None for symbolic dims), or None when its rank is unknown."""
    from .onnx_graph import tensor_shape

    return tensor_shape(value)


def onnx_opset(model: Any) -> int:
    """The default-domain (ai.onnx) opset an ONNX model imports."""
    from .onnx_graph import opset_of

    return opset_of(model)


def onnx_with_weights(original: Any, net: nn.Module, wmap: Any) -> Any:
    """A copy of the ONNX model ``original`` whose bound tensors hold ``net``'s current values
    (:mod:`.onnx_weights`)."""
    from .onnx_weights import write_back

    return write_back(original, net, wmap)


__all__ = ["check_finite_logits", "check_finite_weights", "LoadedModel", "PixelClassifier", "Preprocessing",
           "load_model", "final_linear_of", "parse_floats", "sha256_of", "check_archive_size", "check_parity",
           "converted_network", "load_onnx", "load_timm", "onnx_input_shape", "onnx_opset", "onnx_with_weights"]
