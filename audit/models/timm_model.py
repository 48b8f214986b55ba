"""timm architectures with a user checkpoint, loaded without unpickling arbitrary objects."""
from __future__ import annotations

import logging
import os
import socket
import stat
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from ..bounds import ARCHIVE_SLACK_BYTES, MAX_ARCHIVE_EXPANSION, check_input_size
from ..errors import ConfigError, ModelLoadError
from .wrapper import LoadedModel, PixelClassifier, Preprocessing, check_norm_channels, sha256_of

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")


def check_archive_size(path: Path) -> None:
    """Refuse a zip-format checkpoint (torch.save's since 1.6) whose entries declare more bytes than
    MAX_ARCHIVE_EXPANSION times the file plus ARCHIVE_SLACK_BYTES, from the zip's directory, before torch
    unpacks anything (torch.load allocates each entry's declared size, compressed or not)."""
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip (the legacy format, or garbage): torch.load says what it is
    size = path.stat().st_size
    if declared > MAX_ARCHIVE_EXPANSION * size + ARCHIVE_SLACK_BYTES:
        raise ModelLoadError(f"checkpoint {path} is a {size:,}-byte archive whose entries unpack to {declared:,} "
                             "bytes (a decompression bomb, or a damaged file); torch.save writes them uncompressed: "
                             "save the state dict again with torch.save or safetensors")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or .pth/.pt (``weights_only=True``), unwrapped; only from a regular
    file (never a device or a pipe), a zip archive's declared sizes checked first (:func:`check_archive_size`)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise ModelLoadError(f"checkpoint {path} not found; pass --checkpoint with an existing .pth/.pt/.safetensors "
                             "file") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device or a pipe)"
        raise ModelLoadError(f"checkpoint {path} is {kind}; pass --checkpoint with an existing .pth/.pt/.safetensors "
                             "file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"checkpoint {path} is not a readable safetensors file ({exc})") from exc
    else:
        check_archive_size(path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise ModelLoadError(
                    f"checkpoint {path} holds arbitrary Python objects and will not be unpickled; "
                    "save a plain state dict (torch.save(model.state_dict(), ...)) or safetensors"
                ) from exc
            raise ModelLoadError(f"checkpoint {path} cannot be read as a PyTorch state dict ({text})") from exc
    if isinstance(sd, dict):
        for key in _WRAPPER_KEYS:
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"checkpoint {path} is not a state dict of tensors; save model.state_dict()")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _classes_in(sd: dict[str, torch.Tensor], net: nn.Module) -> Optional[int]:
    """Rows of the checkpoint's classifier weight, if the model has a known classifier."""
    get_classifier = getattr(net, "get_classifier", None)
    if get_classifier is None:
        return None
    clf = get_classifier()
    for name, mod in net.named_modules():
        if mod is clf and isinstance(mod, nn.Linear):
            w = sd.get(f"{name}.weight")
            return int(w.shape[0]) if w is not None else None
    return None


def _check_shapes(sd: dict[str, torch.Tensor], net: nn.Module, checkpoint: Any, arch: str) -> None:
    """ModelLoadError listing the first tensors whose shape differs between checkpoint and architecture."""
    own = net.state_dict()
    bad = [f"{k} {list(v.shape)} vs {list(own[k].shape)}" for k, v in sd.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelLoadError(f"checkpoint {checkpoint} does not fit timm:{arch}: tensor shapes differ "
                             f"(checkpoint vs model: {'; '.join(bad[:3])}{more}); check the architecture name "
                             "and --num-classes")


def _runs_at(net: nn.Module, size: tuple[int, int, int]) -> bool:
    try:
        with torch.no_grad():
            net(torch.zeros(1, *size))
        return True
    except Exception:
        return False


def _hub_model(timm: Any, arch: str, num_classes: int) -> Any:
    """timm's pretrained weights for ``arch`` (downloaded by timm), or one line why not: checked against the
    dataset's class count before anything is downloaded."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise ModelLoadError(f"timm has no pretrained weights for {arch!r}; pass --checkpoint FILE")
    if cfg.num_classes != num_classes:
        raise ModelLoadError(f"timm's pretrained {arch} has {cfg.num_classes} classes but the dataset has "
                             f"{num_classes}; fine-tune it on this data and pass --checkpoint FILE, or audit it on "
                             "data of its classes")
    online = _hub_reachable()
    try:
        with _hub_offline(not online):  # offline: the local cache only, at once, not minutes of retries
            return timm.create_model(arch, pretrained=True)
    except Exception as exc:  # no network, hub errors, a missing hub client: all mean "no weights here"
        if not online:
            raise ModelLoadError(f"timm's pretrained weights for {arch!r} are not in the local cache and the hub "
                                 f"({HUB_URL}) cannot be reached: connect once to download them, or pass "
                                 "--checkpoint FILE") from None
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"could not fetch timm's pretrained weights for {arch!r} ({type(exc).__name__}: {first}); "
                             "check the network, or download them once and pass --checkpoint FILE") from None


HUB_URL = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
HUB_TIMEOUT_S = 3.0  # one short connection attempt decides online or offline


def _hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """True when the weights hub answers a TCP connection within ``timeout`` (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(HUB_URL)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Put the hub client in offline mode for the call (cached files only, no retries), then restore it."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub client fails with its own message
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_timm(
    arch: str,
    checkpoint: Optional[str | Path],
    *,
    num_classes: int,
    mean: Optional[tuple[float, ...]] = None,
    std: Optional[tuple[float, ...]] = None,
    input_size: Optional[int] = None,
    data_size: Optional[tuple[int, int, int]] = None,
    device: torch.device | str = "cpu",
    allow_large_input: bool = False,
    pretrained: bool = False,
) -> LoadedModel:
    """Build ``timm.create_model(arch)`` and load ``checkpoint`` (or the hub's weights: ``pretrained``, which
    keeps the hub's class count and fails with one line offline); preprocessing from the model's config.

    The input size is ``input_size`` when given, else the data's native size when the
    architecture runs at it (CNNs trained on CIFAR at 32x32), else the model's config size.
    """
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:6]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelLoadError(f"timm has no architecture {arch!r}{hint}; see timm.list_models()")
    sd = read_state_dict(Path(checkpoint)) if checkpoint else None
    if pretrained:
        net = _hub_model(timm, arch, num_classes)
    else:
        try:
            net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        except Exception as exc:
            raise ModelLoadError(f"timm could not build {arch!r}: {exc}") from exc
    if sd is not None:
        k = _classes_in(sd, net)
        if k is not None and k != num_classes:
            raise ModelLoadError(
                f"checkpoint {checkpoint} has {k} classes but the dataset has {num_classes}; "
                "audit it on the dataset it was trained for, or pass --num-classes"
            )
        _check_shapes(sd, net, checkpoint, arch)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ModelLoadError(
                f"checkpoint {checkpoint} does not fit timm:{arch} (missing keys: {list(missing)[:3]}, "
                f"unexpected keys: {list(unexpected)[:3]}); check the architecture name"
            )
    elif not pretrained:
        log.warning("--random-weights: auditing timm:%s with random weights", arch)
    net.eval()
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    cfg_size = tuple(cfg.get("input_size", (3, 224, 224)))
    chans = int(cfg_size[0])
    if data_size is not None and not allow_large_input:
        try:
            check_input_size(tuple(data_size), "the data", False)
        except ConfigError:
            data_size = None  # only a hint: fall back to the model's own size
    if input_size is not None:
        size = (chans, int(input_size), int(input_size))
    elif data_size is not None and _runs_at(net, (chans, data_size[1], data_size[2])):
        size = (chans, int(data_size[1]), int(data_size[2]))
    else:
        size = (chans, int(cfg_size[1]), int(cfg_size[2]))
    check_input_size(size, f"timm:{arch}", allow_large_input)
    check_norm_channels(mean, std, chans, f"timm:{arch}")
    pre = Preprocessing(
        input_size=size,
        mean=tuple(mean) if mean is not None else tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(std) if std is not None else tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
    )
    module = PixelClassifier(net, pre).to(device).eval()
    path = Path(checkpoint).resolve() if checkpoint else None
    return LoadedModel(
        module=module,
        spec=f"timm:{arch}",
        format="timm",
        num_classes=num_classes,
        preprocessing=pre,
        path=path,
        sha256=sha256_of(path) if path else None,
        arch=arch,
        info={"pretrained_cfg_input_size": list(cfg_size)},
    )


def final_linear(net: nn.Module) -> Optional[nn.Linear]:
    """timm's classifier when it is a plain linear layer, else None."""
    get_classifier = getattr(net, "get_classifier", None)
    clf = get_classifier() if get_classifier else None
    return clf if isinstance(clf, nn.Linear) else None
