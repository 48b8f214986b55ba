"""PGD on an ONNX model converted to PyTorch vs the same architecture built natively in timm.

Exports the bench's standard-trained timm model to ONNX (TorchScript exporter), loads it the
way the audit does (graph normalisation + onnx2torch), and times PGD (no early stop) on both
with identical weights, images and settings, alternating runs. Usage:
python bench/onnx_overhead.py [--n 500] [--steps 10]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from _common import alternate, load_tensors, standard_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--batch-size", type=int, default=250)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from audit.attacks import PointNoise, create_attack, make_spec
    from audit.models import load_onnx

    native = standard_model(args.arch).eval()
    pre = native.preprocessing
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(native.net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "b"}})
        converted = load_onnx(path, num_classes=10, mean=pre.mean, std=pre.std)
    conv = converted.module.eval()
    for m in (native, conv):
        for p in m.parameters():
            p.requires_grad_(False)
    x, y = load_tensors("test", limit_per_class=args.n // 10)
    attack = create_attack(make_spec("pgd", "linf", 8 / 255, steps=args.steps, step_size=2 / 255))
    bs = args.batch_size

    def run(model):
        for i in range(0, len(y), bs):
            noise = PointNoise.for_points(0, "pgd", range(i, i + len(y[i:i + bs])))
            attack.run(model, x[i:i + bs], y[i:i + bs], noise=noise, early_stop=False)

    with torch.no_grad():
        diff = (native(x[:64]) - conv(x[:64])).abs().max().item()
    best, _ = alternate({"timm (native)": lambda: run(native), "onnx -> torch": lambda: run(conv)}, args.repeats)
    print(f"{args.arch}, {len(y)} CIFAR-10 images 32x32, PGD-{args.steps} without early stop, CPU threads "
          f"{torch.get_num_threads()}; max logit difference native vs converted {diff:.2e}")
    for k, v in best.items():
        print(f"{k:<16} {v:6.2f} s")
    print(f"converted / native time: {best['onnx -> torch'] / best['timm (native)']:.3f}")


if __name__ == "__main__":
    main()
