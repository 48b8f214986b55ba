"""Cost of one REAT training step against one PGD-AT step on the same model and batch.

Both run the same 10-step L-inf PGD (8/255, 2/255) in eval mode and one SGD update in
train mode; REAT adds the Balanced Softmax outer loss and the pairwise tail feature penalty
on the pre-logits features. Steps alternate (drift hits both alike) and the best of N counts.
Target: ratio <= 1.15.

    .venv/bin/python bench/reat_step.py [--arch resnet10t] [--batch 128] [--repeats 5] [--device auto]
"""
from __future__ import annotations

import argparse
import logging
import platform

import torch

from _common import alternate  # noqa: F401  (also puts the repo root on sys.path)

from audit.attacks import create_attack
from audit.attacks import make_spec
from audit.data import assign_groups, longtail_counts
from audit.models import LoadedModel, PixelClassifier, Preprocessing
from audit.phases import resolve_device
from reat_finetune.features import build_feature_model
from reat_finetune.losses import log_prior, tail_class_weights
from reat_finetune.methods import LossContext, get_method
from reat_finetune.train import train_step

log = logging.getLogger("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="off", choices=["off", "bf16"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import timm

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    C = 10
    net = timm.create_model(args.arch, pretrained=False, num_classes=C)
    pre = Preprocessing((3, args.size, args.size), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    pm = PixelClassifier(net, pre).to(dev)
    loaded = LoadedModel(module=pm, spec=f"timm:{args.arch}", format="timm", num_classes=C, preprocessing=pre,
                         arch=args.arch)
    counts = longtail_counts(5000, C, 0.01)  # CIFAR-10-LT rho 0.01 profile
    p = torch.tensor(counts, dtype=torch.float) / sum(counts)
    y = torch.multinomial(p, args.batch, replacement=True, generator=torch.Generator().manual_seed(0)).to(dev)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(dev)
    fm, _ = build_feature_model(loaded, x[:4], explicit_penalty="pairwise", need_features=True)
    is_tail = torch.tensor([g == "tail" for g in assign_groups(counts)], device=dev)
    spec = make_spec("pgd", "linf", 8 / 255, name="pgd-train", steps=10, step_size=2 / 255)
    attack = create_attack(spec)
    autocast = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if args.amp == "bf16" else None
    ctxs = {
        "pgd-at": LossContext(log_prior(counts).to(dev), is_tail, tail_class_weights(counts).to(dev), "off", 1.0, 0.1),
        "reat": LossContext(log_prior(counts).to(dev), is_tail, tail_class_weights(counts).to(dev), "pairwise",
                            1.0, 0.1),
    }
    methods = {"pgd-at": get_method("pgd-at"), "reat": get_method("reat")}
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step(name: str):
        def fn() -> float:
            loss, _, _ = train_step(fm, attack, methods[name], ctxs[name], x, y, opt, gen, autocast)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return float(loss)
        return fn

    step("pgd-at")(), step("reat")()  # warm-up
    best, _ = alternate({"pgd-at": step("pgd-at"), "reat": step("reat")}, args.repeats)
    ratio = best["reat"] / best["pgd-at"]
    hw = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
          else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    anchors = int(is_tail[y].sum())
    print(f"model timm:{args.arch} at {args.size}x{args.size}, batch {args.batch} ({anchors} tail anchors), "
          f"10-step L-inf PGD, amp {args.amp}, {hw}")
    print(f"PGD-AT step  {best['pgd-at'] * 1000:8.1f} ms (best of {args.repeats})")
    print(f"REAT step    {best['reat'] * 1000:8.1f} ms (best of {args.repeats})")
    print(f"ratio REAT / PGD-AT = {ratio:.3f} (target <= 1.15) {'OK' if ratio <= 1.15 else 'OVER'}")


if __name__ == "__main__":
    main()
