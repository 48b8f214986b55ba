"""The GPU check in one command: attack and training throughput, and the demo repaired on the GPU.

Prints, on one CUDA GPU (well under 8 minutes on an H100/H200):

1. ResNet-18 (timm, random weights, 10 classes) at 32x32, batch 256: images/s of the plain
   forward+backward to the input, and of a 10-step L-inf PGD (8/255), in fp32 and bf16
   autocast; the ratio says how close PGD is to its floor of 10 forward+backward passes;
2. REAT training images/s (10-step PGD, Balanced Softmax, pairwise tail penalty, SGD step);
3. the digits demo repaired with every default on ``cuda`` and on ``cpu``: the repair outcome
   and the after-audit verdict must be the same on both (exit code 1 otherwise).

    python bench/gpu_check.py [--json OUT.json] [--skip-demo]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.attacks import BatchNoise, create_attack, make_spec  # noqa: E402
from audit.data import assign_groups, longtail_counts  # noqa: E402
from audit.models import LoadedModel, PixelClassifier, Preprocessing  # noqa: E402

BATCH, SIZE, C = 256, 32, 10


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device, repeats: int = 5) -> float:  # noqa: ANN001
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up, synchronised."""
    fn()
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def _model(dev: torch.device) -> tuple[PixelClassifier, LoadedModel]:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=C)
    pre = Preprocessing((3, SIZE, SIZE), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    pm = PixelClassifier(net, pre).to(dev).eval()
    return pm, LoadedModel(module=pm, spec="timm:resnet18", format="timm", num_classes=C, preprocessing=pre,
                           arch="resnet18")


def attack_throughput(dev: torch.device) -> dict:
    """Images/s of forward+backward and of PGD-10, fp32 and bf16."""
    pm, _ = _model(dev)
    x = torch.rand(BATCH, 3, SIZE, SIZE, device=dev, generator=torch.Generator(device=dev).manual_seed(1))
    y = torch.randint(0, C, (BATCH,), device=dev, generator=torch.Generator(device=dev).manual_seed(2))
    attack = create_attack(make_spec("pgd", "linf", 8 / 255, name="pgd", steps=10, step_size=2 / 255))
    out = {}
    for amp in ("fp32", "bf16"):
        autocast = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if amp == "bf16" else None

        def fwd_bwd() -> None:
            xr = x.clone().requires_grad_(True)
            with (autocast or torch.enable_grad)():
                loss = F.cross_entropy(pm(xr).float(), y)
            torch.autograd.grad(loss, xr)

        def pgd() -> None:
            gen = torch.Generator(device=dev).manual_seed(3)
            attack.run(pm, x, y, noise=BatchNoise(gen, len(x)), early_stop=False, autocast=autocast)

        t_fb, t_pgd = _timed(fwd_bwd, dev), _timed(pgd, dev)
        out[amp] = {"forward_backward_img_s": BATCH / t_fb, "pgd10_img_s": BATCH / t_pgd,
                    "pgd10_over_10_fwd_bwd": t_pgd / (10 * t_fb)}
    return out


def reat_throughput(dev: torch.device) -> float:
    """REAT training images/s (one full step: attack, forward with features, loss, SGD)."""
    from reat_finetune.features import build_feature_model
    from reat_finetune.losses import log_prior, tail_class_weights
    from reat_finetune.methods import LossContext, get_method
    from reat_finetune.train import train_step

    pm, loaded = _model(dev)
    counts = longtail_counts(5000, C, 0.01)
    x = torch.rand(BATCH, 3, SIZE, SIZE, device=dev)
    y = torch.multinomial(torch.tensor(counts, dtype=torch.float), BATCH, replacement=True).to(dev)
    fm, _ = build_feature_model(loaded, x[:4], explicit_penalty="pairwise", need_features=True)
    is_tail = torch.tensor([g == "tail" for g in assign_groups(counts)], device=dev)
    ctx = LossContext(log_prior(counts).to(dev), is_tail, tail_class_weights(counts).to(dev), "pairwise", 1.0, 0.1)
    attack = create_attack(make_spec("pgd", "linf", 8 / 255, name="pgd-train", steps=10, step_size=2 / 255))
    opt = torch.optim.SGD(pm.net.parameters(), lr=1e-4, momentum=0.9)
    gen = torch.Generator(device=dev).manual_seed(0)
    method = get_method("reat")
    return BATCH / _timed(lambda: train_step(fm, attack, method, ctx, x, y, opt, gen), dev)


def demo_repair(device: str, out: Path) -> dict:
    """The demo repaired with every default on ``device``: outcome, after verdict, fine-tuning seconds."""
    from audit.config import AuditConfig
    from tailaudit import RepairConfig, run_repair

    audit = AuditConfig(model=str(ROOT / "examples" / "digits_cnn.onnx"), dataset="digitslt", device=device,
                        quiet=True)
    run = run_repair(RepairConfig(audit=audit, formats=(), quiet=True, out=str(out)))
    s = run.summary
    return {"outcome": s["outcome"]["code"], "verdict_after": run.after.verdict.code if run.after.verdict else None,
            "robust_before": s["before"]["robust_worst_case"], "robust_after": s["after"]["robust_worst_case"],
            "tail_after": (s["after"]["robust_groups"] or {}).get("tail"), "fine_tune_s": s["timings"]["fine_tune_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every step on the CPU with batch 8 (checks the script)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    global BATCH
    if args.cpu_dry_run:
        dev, BATCH, name, devices = torch.device("cpu"), 8, "cpu (dry run)", ("cpu", "cpu")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to torch; run it on a GPU machine", file=sys.stderr)
        return 2
    else:
        dev, name, devices = torch.device("cuda"), torch.cuda.get_device_name(0), ("cuda", "cpu")
    res: dict = {"gpu": name, "torch": torch.__version__, "batch": BATCH}
    t0 = time.perf_counter()
    res["attack"] = attack_throughput(dev)
    for amp, r in res["attack"].items():
        print(f"ResNet-18 32x32 {amp}: forward+backward {r['forward_backward_img_s']:9.0f} img/s, PGD-10 "
              f"{r['pgd10_img_s']:8.0f} img/s ({r['pgd10_over_10_fwd_bwd']:.2f}x the time of 10 forward+backward)")
    res["reat_img_s"] = reat_throughput(dev)
    print(f"REAT training (ResNet-18, batch {BATCH}, PGD-10): {res['reat_img_s']:.0f} img/s")
    ok = True
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as tmp:
            res["demo"] = {f"{d}{i}": demo_repair(d, Path(tmp) / f"{d}{i}") for i, d in enumerate(devices)}
        for d, r in res["demo"].items():
            print(f"demo repair on {d[:-1]}: {r['outcome']}, after-audit verdict {r['verdict_after']}, "
                  f"worst-case robust {100 * r['robust_before']:.1f}% -> {100 * r['robust_after']:.1f}%, "
                  f"fine-tuning {r['fine_tune_s']:.1f} s")
        g, c = res["demo"][f"{devices[0]}0"], res["demo"][f"{devices[1]}1"]
        ok = (g["outcome"], g["verdict_after"]) == (c["outcome"], c["verdict_after"])
        print(f"same outcome and verdict on {devices[0]} and {devices[1]}" if ok
              else f"DIFFERENT outcome or verdict on {devices[0]} and {devices[1]}")
    res["seconds"] = time.perf_counter() - t0
    print(f"gpu_check took {res['seconds']:.0f} s on {res['gpu']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
