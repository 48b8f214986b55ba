"""Train the demo model: a small CNN on digitslt (imbalance 0.01), exported to ONNX.

Plain cross-entropy on the long-tailed split, so the tail classes come out weak: exactly
what ``make demo`` should let the audit show. The network takes [0, 1] pixels of shape
(batch, 1, 8, 8) directly (no normalisation) and ends in an ``nn.Linear`` classifier.

    .venv/bin/python examples/train_digits_cnn.py [--out examples/digits_cnn.onnx]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from audit.data import LTDataset, load_dataset  # noqa: E402

log = logging.getLogger("train_digits_cnn")

IMBALANCE = 0.01
STEPS = 300
BATCH = 64
LR = 3e-3
SEED = 0


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks (16, 32 channels, BatchNorm + ReLU), pooled to 2x2, then a linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),  # 4x4 -> 2x2
            nn.Flatten(),
        )
        self.fc = nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def stack(ds: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole dataset as (images, labels) tensors; digits are tiny."""
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def train(data: LTDataset) -> nn.Module:
    """Seeded Adam + cross-entropy on the long-tailed training split."""
    torch.manual_seed(SEED)
    x, y = stack(data.train)
    model = DigitsCNN(data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for step in range(1, STEPS + 1):
        idx = torch.randint(len(x), (BATCH,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log.info("step %d loss %.4f", step, loss.item())
    return model.eval()


def export_onnx(model: nn.Module, out: Path) -> None:
    """Export with a dynamic batch axis, written to a temporary file and renamed (atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():  # dynamo=False is deliberate (the brief's opset 17 TorchScript path)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    os.replace(tmp, out)


def check_onnx(path: Path, x: torch.Tensor, torch_pred: np.ndarray) -> None:
    """The exported file must load in onnxruntime (CPU) and give the same argmax as torch."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x.numpy()})[0]
    mismatch = int((logits.argmax(1) != torch_pred).sum())
    if mismatch:
        raise SystemExit(f"onnxruntime disagrees with torch on {mismatch} test images")
    log.info("onnxruntime agrees with torch on all %d test images", len(x))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "digits_cnn.onnx")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # reproducible float reductions regardless of the core count
    torch.use_deterministic_algorithms(True)

    data = load_dataset("digitslt", imbalance=IMBALANCE)
    log.info("train counts %s", data.train_counts)
    model = train(data)
    x, y = stack(data.test)
    with torch.no_grad():
        pred = model(x).argmax(1)
    correct = (pred == y).numpy()
    labels = y.numpy()
    per_class = [float(correct[labels == c].mean()) for c in range(data.num_classes)]
    log.info("clean accuracy per class: %s", " ".join(f"{c}:{a:.2f}" for c, a in zip(data.class_names, per_class)))

    export_onnx(model, args.out)
    check_onnx(args.out, x, pred.numpy())
    size_kb = args.out.stat().st_size / 1024
    print(f"clean test accuracy {correct.mean():.4f} ({len(y)} images); wrote {args.out} ({size_kb:.1f} KiB)")


if __name__ == "__main__":
    main()
