"""A 100-class case built offline, for APGD-T's target ranking (MALT vs the top logits) against AutoAttack.

There is no CIFAR-100 here, so the 100 classes are made from CIFAR-10: class 10·c + v is an image
of CIFAR-10 class c shown in colour variant v (one of the six channel orders, plain or with
inverted brightness; the first ten of those twelve). Each image gets one variant, chosen from its
index, so a model must tell both the object and the colouring apart: 100 classes whose nearest
boundaries are not always the highest logits. What it can show: whether ranking targets by
MALT's distance estimate keeps AutoAttack's strength with fewer targets when there are many
classes. What it cannot: how natural 100-class data (CIFAR-100, ImageNet subsets) behave: its
classes are pairs of easy factors, not fine-grained categories.

    OMP_NUM_THREADS=1 python bench/hundred_classes.py --n-per-class 3

The model (timm ``test_resnet``) is standard-trained, then PGD-trained like the CIFAR-10 bench
model (bench/suite_vs_autoattack.py) and cached under .cache/.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time

import torch
import torch.nn.functional as F

from _common import CACHE, load_tensors, log
from suite_vs_autoattack import evaluate

VARIANTS = [(perm, inv) for inv in (False, True) for perm in itertools.permutations(range(3))][:10]


def to_hundred(x: torch.Tensor, y: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in colour variant (index + offset) mod 10 and labels 10·class + variant."""
    v = (torch.arange(len(y)) + offset) % len(VARIANTS)
    out = torch.empty_like(x)
    for k, (perm, inv) in enumerate(VARIANTS):
        m = v == k
        img = x[m][:, list(perm)]
        out[m] = 1 - img if inv else img
    return out, y * 10 + v


def trained(arch: str, std_epochs: int, at_epochs: int, per_class: int, steps: int, eps: float) -> torch.nn.Module:
    """Standard training on all 50 000 images (100 classes), then PGD-AT on ``per_class`` per class (cached)."""
    import timm
    from safetensors.torch import load_file, save_file

    from audit.attacks import BatchNoise, create_attack, make_spec
    from audit.models import PixelClassifier, Preprocessing

    ckpt = CACHE / f"bench100-{arch}-e{std_epochs}-pgdat-e{at_epochs}-k{per_class}-s{steps}.safetensors"
    net = timm.create_model(arch, pretrained=False, num_classes=100)
    model = PixelClassifier(net, Preprocessing((3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    if ckpt.exists():
        net.load_state_dict(load_file(str(ckpt)))
        return model.eval()
    x, y = to_hundred(*load_tensors("train"))
    torch.manual_seed(0)
    attack = create_attack(make_spec("pgd", "linf", eps, steps=steps, step_size=2.5 * eps / steps))
    gen = torch.Generator().manual_seed(0)
    sub = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(100)])
    t0 = time.time()
    for phase, epochs, idx in (("standard", std_epochs, torch.arange(len(y))), ("PGD-AT", at_epochs, sub)):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1 if phase == "standard" else 0.05,
                                                    total_steps=epochs * (len(idx) // 128))
        for ep in range(epochs):
            perm = idx[torch.randperm(len(idx))]
            for i in range(len(idx) // 128):
                b = perm[i * 128:(i + 1) * 128]
                xb, yb = x[b], y[b]
                if phase == "PGD-AT":
                    model.eval()
                    xb = attack.perturb(model, xb, yb, noise=BatchNoise(gen, len(yb)))
                model.train()
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            log.info("%s epoch %d loss %.3f (%.0fs)", phase, ep + 1, loss.item(), time.time() - t0)
    CACHE.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="test_resnet")
    ap.add_argument("--std-epochs", type=int, default=3)
    ap.add_argument("--at-epochs", type=int, default=6)
    ap.add_argument("--at-per-class", type=int, default=100, help="PGD-AT training images per (100-way) class")
    ap.add_argument("--at-steps", type=int, default=4)
    ap.add_argument("--n-per-class", type=int, default=3, help="test points per class (100 classes)")
    ap.add_argument("--eps", type=float, default=4 / 255)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--autoattack", default="published", choices=["published", "none"])
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--probe", type=int, help="Square's probe for ours (default: the standard suite's)")
    ap.add_argument("--variants", default="logit-9,malt-3,malt-9",
                    help="which of ours to run (logit-9 carries AutoAttack when it runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = trained(args.arch, args.std_epochs, args.at_epochs, args.at_per_class, args.at_steps, args.eps)
    x10, y10 = load_tensors("test")
    x, y = to_hundred(x10, y10, offset=7)
    idx = torch.cat([torch.nonzero(y == c).flatten()[:args.n_per_class] for c in range(100)])
    x, y = x[idx], y[idx]
    out: dict = {"config": vars(args), "threads": torch.get_num_threads()}
    runs = [("logit-9", "logit", 9, "published" if args.autoattack == "published" else "none"),
            ("malt-3", "malt", 3, "none"), ("malt-9", "malt", 9, "none")]
    runs = [r for r in runs if r[0] in args.variants.split(",")]
    for name, ranking, targets, aa in runs:
        out[name] = evaluate(model, x, y, args.eps, args.batch, aa, args.probe, ranking, targets, None, n_classes=100)
        log.info("%s: robust %.3f in %.0f s", name, out[name]["ours_robust_acc"], out[name]["ours_s"])
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=2)
    first = out[runs[0][0]]
    aa = first.get("autoattack_published")
    print(f"{args.arch}, 100 colour-variant CIFAR-10 classes, {len(y)} points, L-inf eps {args.eps:.4f}, "
          f"CPU threads {torch.get_num_threads()}; clean {first['clean_acc']:.1%}")
    if aa:
        print(f"AutoAttack (published): robust {aa['robust_acc']:.1%} in {aa['seconds']:.0f} s "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in aa['per_attack_s'].items())})")
    for name, *_ in runs:
        r = out[name]
        print(f"ours {name}: robust {r['ours_robust_acc']:.1%} in {r['ours_s']:.0f} s (APGD-T "
              f"{r['ours_per_attack_s'].get('apgd-t', 0):.0f} s)")


if __name__ == "__main__":
    main()
