"""Shared bench set-up: the real CIFAR-10 JPEGs and a quickly standard-trained small timm model."""
from __future__ import annotations

import logging
import sys
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache"
ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
log = logging.getLogger("bench")


def cifar10_root() -> Path:
    """Unzip ../shared/data/cifar10-jpeg.zip into .cache/cifar10 once (train/<class>/, test/<class>/)."""
    root = CACHE / "cifar10"
    if (root / "test").is_dir() and (root / "train").is_dir():
        return root
    if not ZIP.is_file():
        raise SystemExit(f"bench needs the real CIFAR-10 at {ZIP}")
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(ZIP) as z:
        z.extractall(root)
    # the zip may hold a top-level folder
    inner = [p for p in root.iterdir() if p.is_dir() and (p / "test").is_dir()]
    if inner and not (root / "test").is_dir():
        for sub in inner[0].iterdir():
            sub.rename(root / sub.name)
    return root


def load_tensors(split: str, limit_per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a CIFAR-10 split as one float tensor (cached as .pt under .cache)."""
    cache = CACHE / f"cifar10-{split}-{limit_per_class}.pt"
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        return d["x"], d["y"]
    from audit.data import load_dataset

    data = load_dataset("cifar10lt", imbalance=1.0, data_root=cifar10_root(), download=False)
    ds, labels = (data.train, data.train_labels) if split == "train" else (data.test, data.test_labels)
    idx = range(len(labels))
    if limit_per_class:
        from audit.data import stratified_subset

        idx = stratified_subset(labels, limit_per_class, 0)
    xs, ys = zip(*(ds[int(i)] for i in idx))
    x, y = torch.stack(xs), torch.tensor(ys)
    torch.save({"x": x, "y": y}, cache)
    return x, y


def standard_model(arch: str = "resnet10t", epochs: int = 2, device: str = "cpu") -> torch.nn.Module:
    """A timm model standard-trained on CIFAR-10 at 32x32 (cached); returns the PixelClassifier."""
    import timm

    from audit.models import PixelClassifier, Preprocessing

    ckpt = CACHE / f"bench-{arch}-e{epochs}.safetensors"
    net = timm.create_model(arch, pretrained=False, num_classes=10)
    pre = Preprocessing((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    model = PixelClassifier(net, pre).to(device)
    if ckpt.exists():
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(ckpt)))
        return model.eval()
    x, y = load_tensors("train")
    torch.manual_seed(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (len(y) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    t0 = time.time()
    for ep in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(len(y) // 128):
            b = perm[i * 128:(i + 1) * 128]
            xb = x[b].to(device)
            if torch.rand(1).item() < 0.5:
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), y[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("epoch %d loss %.3f (%.0fs)", ep + 1, loss.item(), time.time() - t0)
    from safetensors.torch import save_file

    CACHE.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    return model.eval()


def alternate(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Run each callable of ``runs`` in turn, ``repeats`` rounds (so drift hits all alike).

    Returns (best wall time per name, last return value per name).
    """
    times: dict = {k: [] for k in runs}
    results: dict = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}, results
