"""Our PGD against torchattacks' PGD on the same model, images, eps and steps (one process).

Prints seconds per run (alternating runs, best of N), the ratios, and robust accuracy of each
on the same points. Usage: python bench/attack_speed.py [--n 1000] [--steps 10] [--device cpu]
"""
from __future__ import annotations

import argparse
import logging

import torch

from _common import alternate, load_tensors, standard_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="test images (stratified)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet10t")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(torch.get_num_threads())
    import torchattacks

    from audit.attacks import PointNoise, create_attack, make_spec

    dev = torch.device(args.device)
    model = standard_model(args.arch, device=args.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = load_tensors("test", limit_per_class=args.n // 10)
    x, y = x.to(dev), y.to(dev)
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(y), 500)]) == y
    alpha = args.eps / 4
    spec = make_spec("pgd", "linf", args.eps, steps=args.steps, step_size=alpha)
    ours = create_attack(spec)
    ta = torchattacks.PGD(model, eps=args.eps, alpha=alpha, steps=args.steps, random_start=True)
    bs = args.batch_size

    def run_ta():
        robust = []
        for i in range(0, len(y), bs):
            xa = ta(x[i:i + bs], y[i:i + bs])
            with torch.no_grad():
                robust.append(model(xa).argmax(1) == y[i:i + bs])
        return torch.cat(robust)

    def run_ours(cascade: bool):
        robust = []
        for i in range(0, len(y), bs):
            xb, yb = x[i:i + bs], y[i:i + bs]
            keep = clean[i:i + bs] if cascade else torch.ones_like(yb, dtype=torch.bool)
            ok = torch.zeros_like(yb, dtype=torch.bool)
            sel = keep.nonzero().squeeze(1)
            if sel.numel():
                out = ours.run(model, xb[sel], yb[sel], noise=PointNoise.for_points(0, "pgd", (i + sel).tolist()),
                               early_stop=cascade)
                ok[sel] = out.step < 0
            robust.append(ok & clean[i:i + bs])
        return torch.cat(robust)

    best, results = alternate({"torchattacks": run_ta, "ours (cascade)": lambda: run_ours(True),
                               "ours (no cascade)": lambda: run_ours(False)}, args.repeats)
    print(f"model {args.arch} (standard training), {len(y)} CIFAR-10 test images, "
          f"clean acc {clean.float().mean():.3f}, L-inf eps {args.eps:.4f}, PGD-{args.steps}, device {args.device}, "
          f"threads {torch.get_num_threads()}")
    for k, v in best.items():
        print(f"{k:<20} {v:7.2f} s   robust acc {results[k].float().mean():.3f}")
    print(f"speed-up with cascade vs torchattacks: {best['torchattacks'] / best['ours (cascade)']:.2f}x")
    print(f"no-cascade time / torchattacks time:   {best['ours (no cascade)'] / best['torchattacks']:.3f}")


if __name__ == "__main__":
    main()
