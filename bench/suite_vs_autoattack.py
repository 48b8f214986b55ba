"""``--suite standard`` against torchattacks' AutoAttack (standard) on the same CIFAR-10 points.

Two small timm models at 32x32: one standard-trained (bench/_common.py) and one PGD-trained
(adversarial fine-tuning of it for a few epochs on a class-balanced subset of the training
JPEGs, cached under .cache). For each, both evaluations run on the same stratified test
points; we report robust accuracy (share of all points still correctly classified), the
points each one breaks that the other misses, and the attack time.

    OMP_NUM_THREADS=1 python bench/suite_vs_autoattack.py --n-per-class 20

``--aa-cache FILE`` keeps AutoAttack's side (robust mask and seconds per attack) in a JSON file
keyed by the model (recipe, epochs, mask, ...), the attack settings, eps and a hash of the exact
points, so re-running ours against the same AutoAttack result costs only ours' time.

Targets (issue 7): ours no more than 0.2 points above AutoAttack's robust accuracy, and at
most one third of its time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import CACHE, load_tensors, log, standard_model


def points_hash(x: torch.Tensor, y: torch.Tensor) -> str:
    """A short fingerprint of the exact evaluation points (pixels and labels)."""
    h = hashlib.sha256()
    h.update(x.detach().float().contiguous().numpy().tobytes())
    h.update(y.detach().long().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class AutoAttackCache:
    """AutoAttack's per-point results in a JSON file: {key: {"robust_mask", "per_attack_s"}}.

    The key names everything the result depends on: the model (architecture, training recipe and
    epochs, the rounding mask), eps, the batch size, which AutoAttack, torchattacks' version and a
    hash of the points. A missing or unreadable file is an empty cache.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.data: dict = {}
        if path:
            try:
                with open(path) as fh:
                    self.data = json.load(fh)
            except (OSError, ValueError):
                self.data = {}

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        if not self.path:
            return
        from audit.contract.files import write_json  # the project's atomic JSON writer

        self.data[key] = value
        write_json(Path(self.path), self.data, indent=1)


def trades_example(model: torch.nn.Module, x: torch.Tensor, eps: float, steps: int,
                   gen: torch.Generator) -> torch.Tensor:
    """TRADES' inner maximisation (Zhang et al., 2019): PGD on KL(f(x) || f(x')) from a small random start."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), 1)
    xa = (x + 0.001 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(xa), 1), p_clean, reduction="sum")
        (g,) = torch.autograd.grad(kl, xa)
        xa = torch.min(torch.max(xa.detach() + 2.5 * eps / steps * g.sign(), x - eps), x + eps).clamp(0, 1)
    return xa.detach()


def pgd_trained(base: torch.nn.Module, arch: str, std_epochs: int, epochs: int, per_class: int, steps: int,
                eps: float, recipe: str = "pgd", beta: float = 6.0) -> torch.nn.Module:
    """Adversarial fine-tuning of the standard model (cached): ``pgd`` (PGD-AT with tailaudit's own training
    attack, cross-entropy on the adversarial images) or ``trades`` (TRADES: cross-entropy on the clean images +
    ``beta`` x KL(clean || adversarial), the adversarial images maximising that KL)."""
    from safetensors.torch import load_file, save_file

    from audit.attacks import BatchNoise, create_attack, make_spec

    tag = "pgdat" if recipe == "pgd" else f"trades{beta:g}"
    ckpt = CACHE / f"bench-{arch}-e{std_epochs}-{tag}-e{epochs}-k{per_class}-s{steps}.safetensors"
    net = base.net
    if ckpt.exists():
        net.load_state_dict(load_file(str(ckpt)))
        return base.eval()
    x_all, y_all = load_tensors("train")
    from audit.data import stratified_subset

    idx = torch.as_tensor(stratified_subset(y_all.numpy(), per_class, 0))
    x, y = x_all[idx], y_all[idx]
    attack = create_attack(make_spec("pgd", "linf", eps, steps=steps, step_size=2.5 * eps / steps))
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    bs = 128
    total = epochs * (len(y) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total)
    t0 = time.time()
    for ep in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(len(y) // bs):
            b = perm[i * bs:(i + 1) * bs]
            xb, yb = x[b], y[b]
            if torch.rand(1).item() < 0.5:
                xb = xb.flip(3)
            base.eval()
            if recipe == "trades":
                xa = trades_example(base, xb, eps, steps, gen)
                base.train()
                logits = base(torch.cat([xb, xa]))
                clean, adv = logits[:len(yb)], logits[len(yb):]
                loss = F.cross_entropy(clean, yb) + beta * F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1),
                                                                    reduction="batchmean")
            else:
                xa = attack.perturb(base, xb, yb, noise=BatchNoise(gen, len(yb)))
                base.train()
                loss = F.cross_entropy(base(xa), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("%s epoch %d loss %.3f (%.0fs)", recipe, ep + 1, loss.item(), time.time() - t0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    return base.eval()


class BitDepth(torch.nn.Module):
    """A classic gradient-masking 'defence': pixels rounded to ``levels`` values before the model.

    Rounding has a zero gradient almost everywhere, so gradient attacks see nothing; a
    score-based attack (Square) still finds the model's weaknesses.
    """

    def __init__(self, model: torch.nn.Module, levels: int = 32) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * (self.levels - 1)) / (self.levels - 1))


def autoattacks(model: torch.nn.Module, eps: float, which: str, n_classes: int = 10) -> dict:
    """AutoAttack (standard) from torchattacks: its class defaults, and/or the published settings.

    torchattacks' ``AutoAttack(version="standard")`` builds APGD-CE, APGD-T and FAB-T with its
    classes' default of 10 iterations; the published AutoAttack (Croce & Hein 2020, RobustBench)
    runs 100 iterations each (9 targets for APGD-T and FAB-T) and Square with 5000 queries.
    Each value is a list of (name, attack) run as AutoAttack's cascade: every attack on the
    points all earlier ones left robust (what torchattacks' MultiAttack does), timed one by one.
    """
    import torchattacks

    out = {}
    if which in ("torchattacks", "both"):
        out["autoattack_torchattacks_defaults"] = [
            ("autoattack", torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes,
                                                   seed=0))]
    if which in ("published", "both"):
        out["autoattack_published"] = [
            ("apgd-ce", torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)),
            ("apgd-t", torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=n_classes,
                                          seed=0)),
            ("fab-t", torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                       n_classes=n_classes, seed=0)),
            ("square", torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0)),
        ]
    return out


def run_autoattack(model: torch.nn.Module, attacks: list, x: torch.Tensor, y: torch.Tensor,
                   batch: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Robust mask after the cascade and seconds per attack (batches of ``batch`` points)."""
    secs = {name: 0.0 for name, _ in attacks}
    robust = []
    for i in range(0, len(y), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        with torch.no_grad():
            alive = model(xb).argmax(1) == yb
        for name, atk in attacks:
            sel = alive.nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            t0 = time.perf_counter()
            adv = atk(xb[sel], yb[sel])
            secs[name] += time.perf_counter() - t0
            with torch.no_grad():
                alive[sel] = model(adv).argmax(1) == yb[sel]
        robust.append(alive)
    return torch.cat(robust), secs


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int,
             which: str = "both", probe: int | None = None, ranking: str | None = None, targets: int | None = None,
             candidates: int | None = None, n_classes: int = 10, cache: AutoAttackCache | None = None,
             model_key: str = "") -> dict:
    from audit.attacks import create_attack
    from audit.config import AuditConfig
    from audit.phases import Evaluator

    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    specs = AuditConfig(model="timm:bench", suite="standard", eps=eps, probe=probe, target_ranking=ranking,
                        targets=targets, rank_candidates=candidates).attack_specs()
    attacks = [create_attack(s) for s in specs]
    ids = torch.arange(len(y))
    batches = [(x[i:i + batch], y[i:i + batch], ids[i:i + batch]) for i in range(0, len(y), batch)]
    t0 = time.perf_counter()
    rec = Evaluator(model, n_classes, (3, 32, 32), torch.device("cpu")).cascade(batches, attacks, n_total=len(y),
                                                                                seed=0)
    ours_s = time.perf_counter() - t0
    ours_robust = torch.from_numpy(rec.clean_correct & ~rec.broken().any(0))

    out = {"n": len(y), "clean_acc": float(rec.clean_correct.mean()),
           "ours_robust_acc": float(ours_robust.float().mean()), "ours_s": ours_s,
           "ours_per_attack_s": dict(zip(rec.attack_names, rec.attack_seconds)),
           "ours_attacked": dict(zip(rec.attack_names, rec.attacked)),
           "square_full_budget_points": int(rec.carried_points[-1].sum()), "square_probe": specs[-1].params.probe,
           "square_reruns": int(getattr(specs[-1].params, "reruns", 0)),
           "square_rerun_points": int(rec.rerun_points[-1].sum()) if rec.rerun_points is not None else 0,
           # per Square run (0 = the first, r = the r-th rerun on points the gradients were blind on): the
           # positions it broke (a run is a start and `queries` queries, so run r's steps are r * (queries + 1) + k)
           "square_broken_by_run": {
               str(r): [int(i) for i in ((rec.step[-1] >= 0) & (rec.step[-1] // (specs[-1].params.queries + 1) == r)
                                         ).nonzero()[0]]
               for r in range(1 + int(getattr(specs[-1].params, "reruns", 0)))},
           "ours_robust_mask": ours_robust.int().tolist(), "labels": y.tolist(),
           "apgd_t": next((s.params.to_dict() for s in specs if s.kind == "apgd-t"), None)}
    import torchattacks

    for name, aa in autoattacks(model, eps, which, n_classes).items():
        key = (f"{model_key}|{name}|eps={eps:.6f}|batch={batch}|classes={n_classes}|"
               f"torchattacks={torchattacks.__version__}|points={points_hash(x, y)}")
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            aa_robust, per_attack = torch.tensor(hit["robust_mask"], dtype=torch.bool), hit["per_attack_s"]
            log.info("%s: AutoAttack's result read from %s (%s)", name, cache.path, key)
        else:
            aa_robust, per_attack = run_autoattack(model, aa, x, y, batch)
            if cache is not None:
                cache.put(key, {"robust_mask": aa_robust.int().tolist(), "per_attack_s": per_attack})
        aa_s = sum(per_attack.values())
        out[name] = {"robust_acc": float(aa_robust.float().mean()),
                     "both_robust_acc": float((ours_robust & aa_robust).float().mean()),
                     "broken_by_autoattack_only": int((ours_robust & ~aa_robust).sum()),
                     "broken_by_ours_only": int((aa_robust & ~ours_robust).sum()),
                     "points_broken_by_autoattack_only": (ours_robust & ~aa_robust).nonzero().squeeze(1).tolist(),
                     "points_broken_by_ours_only": (aa_robust & ~ours_robust).nonzero().squeeze(1).tolist(),
                     "cached": hit is not None,
                     "seconds": aa_s, "per_attack_s": per_attack, "time_ratio": ours_s / aa_s,
                     "robust_mask": aa_robust.int().tolist()}
        log.info("%s: %s", name, out[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="test_resnet")
    ap.add_argument("--std-epochs", type=int, default=3)
    ap.add_argument("--at-epochs", type=int, default=6)
    ap.add_argument("--at-per-class", type=int, default=1000, help="PGD-AT training images per class")
    ap.add_argument("--at-steps", type=int, default=4)
    ap.add_argument("--recipe", choices=["pgd", "trades"], default="pgd",
                    help="the robust model's training: PGD-AT or TRADES (beta --trades-beta)")
    ap.add_argument("--trades-beta", type=float, default=6.0)
    ap.add_argument("--n-per-class", type=int, default=20, help="test points per class")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--batch", type=int, default=256, help="points per batch, for both tools (the CLI default)")
    ap.add_argument("--only", choices=["standard", "pgd"], help="evaluate one model only")
    ap.add_argument("--mask", action="store_true",
                    help="put the models behind 5-bit input rounding (gradient masking: zero input gradients)")
    ap.add_argument("--autoattack", default="both", choices=["torchattacks", "published", "both", "none"],
                    help="torchattacks' AutoAttack class defaults (10 iterations), the published settings (100), "
                         "or both")
    ap.add_argument("--probe", type=int, help="Square's probe for ours (default: the standard suite's 500; 0 = off)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--target-ranking", choices=["logit", "malt"], help="ours: APGD-T's target ranking")
    ap.add_argument("--targets", type=int, help="ours: APGD-T target classes")
    ap.add_argument("--rank-candidates", type=int, help="ours, MALT: classes ranked per point")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--aa-cache", help="JSON file to read AutoAttack's per-point results from, and to add new ones "
                                       "to (keyed by model, settings and a hash of the points)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = AutoAttackCache(args.aa_cache) if args.aa_cache else None
    x, y = load_tensors("test", args.n_per_class)
    out = {"config": vars(args), "threads": torch.get_num_threads()}
    for kind in ("standard", "pgd"):
        if args.only and args.only != kind:
            continue
        model = standard_model(args.arch, epochs=args.std_epochs)
        if kind == "pgd":
            model = pgd_trained(model, args.arch, args.std_epochs, args.at_epochs, args.at_per_class, args.at_steps,
                                args.eps, args.recipe, args.trades_beta)
        if args.mask:
            model = BitDepth(model).eval()
        log.info("evaluating the %s-trained model on %d points", kind, len(y))
        model_key = (f"{kind}|arch={args.arch}|std_epochs={args.std_epochs}|mask={bool(args.mask)}" + (
            f"|recipe={args.recipe}|beta={args.trades_beta:g}|at_epochs={args.at_epochs}|"
            f"at_per_class={args.at_per_class}|at_steps={args.at_steps}" if kind == "pgd" else ""))
        out[kind] = evaluate(model, x, y, args.eps, args.batch, args.autoattack, args.probe, args.target_ranking,
                             args.targets, args.rank_candidates, cache=cache, model_key=model_key)
        log.info("%s: %s", kind, json.dumps(out[kind]))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=2)
    print(f"{args.arch} at 32x32, CIFAR-10, {len(y)} test points ({args.n_per_class} per class), L-inf eps "
          f"{args.eps:.4f}, CPU threads {torch.get_num_threads()}")
    print("| model | clean | ours: --suite standard | AutoAttack | its robust acc | broken only by AA | only by ours "
          "| time ours | time AA | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("standard", "pgd"):
        if kind not in out:
            continue
        r = out[kind]
        for name in ("autoattack_torchattacks_defaults", "autoattack_published"):
            if name in r:
                a = r[name]
                print(f"| {kind}-trained | {r['clean_acc']:.1%} | {r['ours_robust_acc']:.1%} | "
                      f"{name.replace('autoattack_', '')} | {a['robust_acc']:.1%} | {a['broken_by_autoattack_only']} | "
                      f"{a['broken_by_ours_only']} | {r['ours_s']:.0f} s | {a['seconds']:.0f} s | "
                      f"{a['time_ratio']:.2f} |")

    for kind in ("standard", "pgd"):
        if kind not in out:
            continue
        r = out[kind]
        ours = ", ".join(f"{k} {v:.1f} s ({r['ours_attacked'][k]} pts)" for k, v in r["ours_per_attack_s"].items())
        print(f"{kind}-trained, ours: {ours}; Square's full budget on {r['square_full_budget_points']} points, "
              f"its {r['square_reruns']} rerun(s) on {r['square_rerun_points']} points (gradients blind there); "
              "points each Square run broke: " + "; ".join(f"run {k}: {len(v)} {v if k != '0' else ''}".rstrip()
                                                           for k, v in r["square_broken_by_run"].items()))
        if "autoattack_published" in r:
            aa = ", ".join(f"{k} {v:.1f} s" for k, v in r["autoattack_published"]["per_attack_s"].items())
            print(f"{kind}-trained, AutoAttack (published): {aa}")
        for name in ("autoattack_torchattacks_defaults", "autoattack_published"):
            if name in r:
                a = r[name]
                print(f"{kind}-trained, points broken only by {name.replace('autoattack_', 'AutoAttack ')}: "
                      f"{a['points_broken_by_autoattack_only']}, only by ours: {a['points_broken_by_ours_only']}"
                      + (" (AutoAttack's side read from --aa-cache)" if a["cached"] else ""))


if __name__ == "__main__":
    main()
