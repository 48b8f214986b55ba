#!/usr/bin/env python3
"""tailaudit command line: parse flags, call the Python API, map known errors to exit codes."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from audit.contract.model import AuditResults

EXIT_USAGE = 2


def _int_at_least(low: int):
    """argparse type: a whole number >= ``low``, with a one-line message otherwise."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _number(text: str) -> float:
    from audit.values import parse_number
    from audit.errors import ConfigError

    try:
        return parse_number(text, "value")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(value):
    from audit import bounds

    return getattr(bounds, value) if isinstance(value, str) else value


def _b(name: str, lo, hi):
    """argparse type: whole number in [lo, hi]; limits by name from audit/bounds.py."""
    from audit.bounds import bounded_int

    return bounded_int(name, _limit(lo), _limit(hi))


def _f(name: str, lo, hi, **kw):
    """argparse type: finite number (accepts 8/255) in the range; limits by name from audit/bounds.py."""
    from audit.bounds import bounded_float

    return bounded_float(name, _limit(lo), _limit(hi), **kw)


def _add_limits_args(p: argparse.ArgumentParser) -> None:
    """Flags of the hardening work: thread count and the large-input override."""
    from audit.bounds import MAX_INPUT_SIDE, MAX_THREADS

    run = _group(p, "run")
    run.add_argument("--threads", type=_b("--threads", 1, MAX_THREADS),
                   help="CPU threads for torch (intra- and inter-op); recorded in results. Identical results need "
                        "the same threads, device and library versions")
    run.add_argument("--allow-large-input", action="store_true",
                   help=f"allow model inputs above {MAX_INPUT_SIDE} pixels a side (memory grows with it)")


# audit --help / repair --help: options in these groups, in this order
GROUPS = {"model": "model", "data": "data", "threat": "threat model", "attacks": "attacks",
          "corruptions": "natural corruptions", "outputs": "outputs", "run": "run"}


def _group(p: argparse.ArgumentParser, key: str) -> argparse._ArgumentGroup:
    """The parser's help group ``key`` (created once, in :data:`GROUPS` order when :func:`_groups` ran first)."""
    groups = p.__dict__.setdefault("_tailaudit_groups", {})
    if key not in groups:
        groups[key] = p.add_argument_group(GROUPS[key])
    return groups[key]


def _groups(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for key in GROUPS:
        _group(p, key)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse that prints one line (not the whole usage) on bad flags, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from audit.textsafe import one_line

        self.exit(EXIT_USAGE, f"tailaudit: error: {one_line(message)} (see {self.prog} --help)\n")


def _add_model_data_args(p: argparse.ArgumentParser) -> None:
    m = _group(p, "model")
    m.add_argument("model", help="path/to/model.onnx or timm:ARCH (with --checkpoint)")
    m.add_argument("--checkpoint", help="state dict for timm:ARCH (.pth/.pt/.safetensors; never unpickled)")
    weights = m.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="weights", action="store_const", const="pretrained",
                         help="timm:ARCH with the hub's pretrained weights (downloads them; its own class count)")
    weights.add_argument("--random-weights", dest="weights", action="store_const", const="random",
                         help="timm:ARCH with random weights, on purpose (a timm model without weights is refused)")
    _group(p, "run").add_argument("--force", action="store_true",
                   help="run the attacks even when the clean check finds the model cannot be graded on this data "
                        "(it stops with exit code 4 otherwise)")
    m.add_argument("--num-classes", type=_b("--num-classes", 1, "MAX_CLASSES"), help="default: the dataset's class count")
    m.add_argument("--mean", help="per-channel mean the model expects, e.g. 0.4914,0.4822,0.4465 (folded into the wrapper)")
    m.add_argument("--std", help="per-channel std the model expects, e.g. 0.2471,0.2435,0.2616")
    m.add_argument("--input-size", type=_b("--input-size", 1, 10**6), help="square input size the model was trained at")
    _add_dataset_args(p)
    _group(p, "data").add_argument("--n-per-class", type=_b("--n-per-class", 1, "MAX_N_PER_CLASS"), help="stratified seeded subset: K test images per class")
    _group(p, "data").add_argument("--groups", default="thirds", choices=["thirds", "shots"],
                   help="head/medium/tail rule: thirds of classes by count, or shots (>100, <20)")


def _add_dataset_args(p: argparse.ArgumentParser, *, named: bool = True) -> None:
    """--dataset (unless the command names the dataset itself) and the options that describe it."""
    d = _group(p, "data")
    if named:
        d.add_argument("--dataset", default="digitslt",
                       help="cifar10lt | cifar100lt | digitslt | imagefolder (default digitslt)")
    d.add_argument("--imbalance", type=_f("--imbalance", 0, 1, lo_open=True), default=0.01, help="rho = smallest/largest class (default 0.01)")
    d.add_argument("--data-root", help="folder with the data (torchvision CIFAR layout or train/<class>/, test/<class>/)")
    d.add_argument("--class-counts", help="JSON file with the training counts the model was really trained on, per "
                   "class: for cifar10lt/cifar100lt (instead of tailaudit's own sampled long-tail profile, which "
                   "page 1 otherwise describes as such) and for an imagefolder with only an evaluation folder")
    d.add_argument("--no-download", action="store_true", help="never try to download datasets")


def _standard_probe() -> int:
    """Square's probe in the standard suite (the suite registry is its one source)."""
    from audit.attacks import SUITES

    return next(int(o.get("probe", 0)) for k, o in SUITES.get("standard").attacks if k == "square")


def _add_suite_args(p: argparse.ArgumentParser) -> None:
    """--suite, --attacks and the per-attack budgets; choices and help come from the registries."""
    from audit.attacks import ATTACKS, SUITES
    from audit.bounds import MAX_QUERIES, MAX_RESTARTS, MAX_STEPS, MAX_TARGETS

    suites = "; ".join(f"{n}: {SUITES.get(n).description}" for n in SUITES.names())
    kinds = ", ".join(f"{n} ({ATTACKS.get(n).display_name})" for n in ATTACKS.names())
    a = _group(p, "attacks")
    a.add_argument("--suite", default="quick", choices=SUITES.names(), help=f"attack suite (default quick). {suites}")
    a.add_argument("--attacks", help=f"explicit comma-separated cascade instead of a suite, from: {kinds}; or none "
                                     "with --corruptions for a corruption-only audit (docs/corruptions.md)")
    a.add_argument("--steps", type=_b("--steps", 1, "MAX_STEPS"),
                   help=f"iterations of every gradient attack (default: each attack's own, PGD 20, APGD 100; at most "
                        f"{MAX_STEPS})")
    a.add_argument("--restarts", type=_b("--restarts", 1, "MAX_RESTARTS"), help=f"APGD runs per point (default 1; thorough 5; at most {MAX_RESTARTS})")
    a.add_argument("--queries", type=_b("--queries", 1, "MAX_QUERIES"), help=f"Square queries per point (default 5000; at most {MAX_QUERIES})")
    a.add_argument("--probe", type=_b("--probe", 0, "MAX_QUERIES"),
                   help="Square: a point stops after this many queries unless Square is doing better on it "
                        f"than the gradient attacks did (standard suite {_standard_probe()}; 0 = full --queries for "
                        "every point)")
    a.add_argument("--targets", type=_b("--targets", 1, "MAX_TARGETS"),
                   help=f"APGD-T target classes (default 9, C-1 when fewer; at most {MAX_TARGETS})")
    a.add_argument("--target-ranking", choices=["logit", "malt"],
                   help="how APGD-T picks its --targets classes: logit = highest clean logits (AutoAttack, the "
                        "default); malt = MALT's estimated distance to each class boundary over --rank-candidates")
    a.add_argument("--rank-candidates", type=_b("--rank-candidates", 1, "MAX_TARGETS"),
                   help="MALT: classes ranked per point, the top ones by clean logit (default 100; one gradient each)")


def _add_attack_args(p: argparse.ArgumentParser) -> None:
    _add_suite_args(p)
    t, a = _group(p, "threat"), _group(p, "attacks")
    t.add_argument("--norm", default="linf", choices=["linf", "l2"],
                   help="threat model: linf limits every pixel's change to --eps; l2 limits the whole image's "
                        "change (default linf)")
    t.add_argument("--eps", default="8/255", help="radius of the threat model in [0,1] pixels (accepts 8/255); several "
                   "(1/255,2/255,4/255,8/255) audit a robustness curve, the largest is the headline")
    a.add_argument("--step-size", type=_f("--step-size", 0, 1, lo_open=True), help="PGD step size alpha (default eps/4, i.e. 2/255 at 8/255)")
    a.add_argument("--temperature", help="Temperature-PGD T, one value or a list to sweep (default 0.5; thorough "
                                         "0.1,0.5,2,5)")
    a.add_argument("--independent", action="store_true",
                   help="run every attack on every clean-correct point (head-to-head) instead of the cascade")
    a.add_argument("--seed", type=_b("--seed", 0, "SEED_MAX"), default=0,
                   help="attack randomness, 0 .. 2**63-1: a point's random start depends only on (seed, attack, its "
                        "test-set index)")
    _group(p, "data").add_argument("--subset-seed", type=_b("--subset-seed", 0, "SEED_MAX"), default=0,
                   help="picks the --n-per-class subset, 0 .. 2**63-1 (default 0)")
    a.add_argument("--calibration-steps", type=_b("--calibration-steps", 0, "MAX_STEPS"), default=20, metavar="N",
                   help="calibration under attack: steps of the deterministic PGD after the cascade that measures "
                        "how confident the attacked answers can be made (default 20; 0 = clean calibration only)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    r = _group(p, "run")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU when torch sees one)")
    r.add_argument("--batch-size", type=_b("--batch-size", 1, "MAX_BATCH"), default=256,
                   help="test images attacked at once (default 256); results do not depend on it, memory does")
    r.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast for the attack (GPU)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_verdict_args(p: argparse.ArgumentParser) -> None:
    _group(p, "model").add_argument("--labels", metavar="FILE",
                   help="the model's class names in output order (one per line, or a JSON list); default: the "
                        "dataset's order")
    _group(p, "outputs").add_argument("--fail-under", metavar="KEY=VALUE,...",
                   help="CI gate: exit 3 when a figure misses its threshold; keys clean, robust, balanced, "
                        "worst-class, tail (floors) and max-gap (ceiling); values 0.4 or 40%%")


def _add_scaling_args(p: argparse.ArgumentParser, *, repair: bool = False) -> None:
    """Data-loading workers and DDP options (launch under torchrun for several processes)."""
    _group(p, "run").add_argument("--workers", type=_b("--workers", 0, "MAX_WORKERS"), default=0,
                   help="DataLoader processes decoding images (default 0: in the main process); pinned memory on GPU")
    if repair:
        _group(p, "run").add_argument("--no-sync-bn", action="store_true",
                       help="under torchrun on GPUs: keep per-rank BatchNorm statistics instead of SyncBatchNorm")


def _add_corruption_args(p: argparse.ArgumentParser) -> None:
    """The corruption audit beside the attacks (audit/corruptions/, docs/corruptions.md)."""
    g = _group(p, "corruptions")
    g.add_argument("--corruptions", metavar="common|all|NAME[,NAME...]",
                   help="also audit natural corruptions per class: common (the 15 of ImageNet-C/CIFAR-10-C), all "
                        "(+ speckle_noise, gaussian_blur, spatter, saturate) or names (default: off)")
    g.add_argument("--severity", default="all", metavar="1..5|all",
                   help="corruption severities, one, a list (1,3,5) or all (default all)")
    g.add_argument("--corruption-root", metavar="DIR",
                   help="read released CIFAR-10-C/CIFAR-100-C .npy files (or ImageNet-C folders) instead of generating")


def _add_budget_args(t: argparse._ArgumentGroup) -> None:
    """Repair budget, learning rate, selection and class balancing (defaults live in RepairConfig)."""
    t.add_argument("--train-steps-total", type=_b("--train-steps-total", 1, "MAX_TRAIN_STEPS"), metavar="N",
                   help="fine-tuning budget in optimizer steps (batches); not to be confused with --train-steps, "
                        "the PGD iterations of the training attack. Default: automatic, max(300, 10 epochs) steps")
    t.add_argument("--epochs", type=_b("--epochs", 1, "MAX_EPOCHS"),
                   help="budget as whole passes over the training split instead of --train-steps-total (give one)")
    t.add_argument("--evaluations", type=_b("--evaluations", 1, "MAX_EVALUATIONS"), metavar="K",
                   help="validation checkpoints spread through the budget; the best one is kept (default 10)")
    t.add_argument("--lr", type=_f("--lr", 0, "MAX_LR", lo_open=True),
                   help="initial SGD learning rate, momentum 0.9, weight decay 5e-4, decayed by --schedule "
                        "(default: a short search over 0.2, 0.05, 0.0125, 0.003 within the budget picks it)")
    t.add_argument("--grad-clip", type=_f("--grad-clip", 0, "MAX_COEFFICIENT", lo_open=True), metavar="NORM",
                   help="cap the gradient norm of each update at NORM (default off; docs/repair.md)")
    t.add_argument("--sampler", choices=["auto", "shuffle", "class-balanced"],
                   help="batch sampling: shuffle (each image once a pass), class-balanced (every class equally "
                        "likely; Balanced Softmax then uses the uniform prior) or auto (class-balanced when the "
                        "smallest class has 20+ training images, else shuffle) (default auto)")
    t.add_argument("--trades-beta", type=_f("--trades-beta", 0, "MAX_COEFFICIENT"), help="weight of the KL term of --method trades-bsl (default 6)")


def _add_output_args(p: argparse.ArgumentParser, out_help: str) -> None:
    o = _group(p, "outputs")
    o.add_argument("--out", help=out_help)
    o.add_argument("--no-html", action="store_true", help="do not write report.html")
    o.add_argument("--no-pdf", action="store_true", help="do not write report.pdf")


def _budget_kwargs(args: argparse.Namespace) -> dict:
    """The flags of :func:`_add_budget_args` that were given, as RepairConfig keywords."""
    keys = {"train_steps_total": "steps_total", "epochs": "epochs", "evaluations": "evaluations", "lr": "lr",
            "grad_clip": "grad_clip",
            "sampler": "sampler", "trades_beta": "trades_beta"}
    return {cfg: getattr(args, a) for a, cfg in keys.items() if getattr(args, a) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tailaudit", description="Class-wise adversarial robustness audits on long-tailed data.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = _groups(sub.add_parser("audit", help="audit a model: class-wise PGD / Temperature-PGD robustness"))
    _add_model_data_args(p)
    _add_attack_args(p)
    _add_run_args(p)
    _add_limits_args(p)
    _add_scaling_args(p)
    _group(p, "attacks").add_argument("--black-box", action="store_true",
                   help="ONNX only: no gradients, Square on onnxruntime alone (an upper bound; automatic when the "
                        "model cannot be converted)")
    _group(p, "attacks").add_argument("--sanity", action="store_true",
                   help="also check that robust accuracy falls to about zero at a huge radius (gradient masking)")
    _add_corruption_args(p)
    _add_verdict_args(p)
    _add_output_args(p, "output folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    p = _groups(sub.add_parser("repair", help="adversarially fine-tune a model (REAT, AT-BSL, PGD-AT, TRADES-BSL, LBGAT, "
                                              "MiSLAS, ResLT) and audit it before/after"))
    _add_model_data_args(p)
    _add_attack_args(p)  # the before/after audit; the after-audit repeats it unchanged
    _add_run_args(p)
    _add_limits_args(p)
    _add_scaling_args(p, repair=True)
    _add_verdict_args(p)  # --fail-under judges the after-audit
    t = p.add_argument_group("fine-tuning (defaults are for fine-tuning a pretrained model, not training from scratch)")
    t.add_argument("--method", default="reat",
                   help="reat: RBL counts + Balanced Softmax + tail feature penalty; at-bsl: Balanced Softmax only; "
                        "pgd-at: cross-entropy; trades-bsl: TRADES with a Balanced Softmax natural term; lbgat: the "
                        "adversarial logits follow the input model's clean ones; mislas: classifier + per-class scale on a frozen "
                        "backbone; reslt: head/medium/tail branches folded into one layer (default reat)")
    _add_budget_args(t)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "step"],
                   help="cosine decay per step, or x0.1 at 75%% and 90%% of the epochs (default cosine)")
    t.add_argument("--batch-size-train", type=_b("--batch-size-train", 2, "MAX_BATCH"), default=128, help="training batch size (default 128)")
    t.add_argument("--train-eps", help="training attack radius (default: --eps, e.g. 8/255)")
    t.add_argument("--train-steps", type=_b("--train-steps", 1, "MAX_STEPS"), default=10,
                   help="PGD iterations of the training attack per batch (default 10); the budget in optimizer "
                        "steps is --train-steps-total")
    t.add_argument("--train-step-size", type=_f("--train-step-size", 0, 1, lo_open=True), help="training PGD step (default train eps / 4: 2/255 at 8/255)")
    t.add_argument("--tail-penalty", choices=["pairwise", "reference", "off"],
                   help="REAT tail feature penalty: pairwise (default), reference (the authors' code, collapsed to a "
                        "scalar per anchor) or off")
    t.add_argument("--tail-lambda", type=_f("--tail-lambda", 0, "MAX_COEFFICIENT"), default=1.0, help="coefficient of the tail feature penalty (default 1)")
    t.add_argument("--margin", type=_f("--margin", 0, "MAX_COEFFICIENT"), default=0.1,
                   help="hinge margin on the KL of different-class pairs in the pairwise penalty (default 0.1)")
    t.add_argument("--val-fraction", type=_f("--val-fraction", 0, 0.5, lo_open=True), default=0.2,
                   help="seeded share of each class's evaluation points set aside to pick the checkpoint; the audits "
                        "report the other points (default 0.2)")
    t.add_argument("--val-root", metavar="DIR",
                   help="pick the checkpoint on your own validation images, DIR/<class>/ (not training images), "
                        "instead of carving them from the evaluation data")
    t.add_argument("--val-split", metavar="NAME",
                   help="the same, naming a folder under --data-root (e.g. val)")
    t.add_argument("--min-clean-kept", type=_f("--min-clean-kept", 0, 1), default=0.8,
                   help="a fine-tuned checkpoint must keep this share of the input model's clean accuracy on the "
                        "selection images (and not collapse) to replace it; otherwise the input model is returned "
                        "(default 0.8)")
    t.add_argument("--guide", default="frozen", choices=["frozen", "learnable"],
                   help="lbgat: the input model guides as it is (frozen, default) or is trained alongside with "
                        "Balanced Softmax at a tenth of --lr (learnable)")
    t.add_argument("--lbgat-beta", type=_f("--lbgat-beta", 0, 100), default=0.0,
                   help="lbgat: weight of KL(clean || adversarial) next to the guide's MSE (default 0: keeps the most "
                        "clean accuracy)")
    t.add_argument("--smoothing", default="off", choices=["off", "label-aware"],
                   help="MiSLAS label-aware smoothing on every method's label loss: more for frequent classes")
    t.add_argument("--smoothing-head", type=_f("--smoothing-head", 0, 1), default=0.3,
                   help="smoothing of the most frequent class (default 0.3, MiSLAS's CIFAR-10-LT value)")
    t.add_argument("--smoothing-tail", type=_f("--smoothing-tail", 0, 1), default=0.0,
                   help="smoothing of the rarest class (default 0)")
    t.add_argument("--smoothing-shape", default="concave", choices=["concave", "linear", "convex"],
                   help="profile of the smoothing over the class counts (default concave)")
    from reat_finetune.config import EPS_SCHEDULES, RepairConfig

    t.add_argument("--eps-schedule", default=RepairConfig.eps_schedule, choices=list(EPS_SCHEDULES),
                   help="training radius ramped up from 0 over the first 30%% of the budget (warmup, the default), "
                        "or at full strength from the first step (constant)")
    t.add_argument("--eps-per-class", action="store_true",
                   help="RobustLT's class-wise training radii: larger for rarer classes, same mean over the images")
    t.add_argument("--shift-bn", action="store_true",
                   help="MiSLAS's shifted BatchNorm: re-estimate BatchNorm statistics of the kept model on class-balanced "
                        "clean training batches before export (kept only if validation does not get worse)")
    t.add_argument("--augment", default="none", choices=["none", "flip-crop"],
                   help="training augmentation: none, or random flip + 4-pixel crop for natural images (default none)")
    t.add_argument("--resume", metavar="DIR", help="continue a killed or interrupted run from DIR/checkpoint.pt")
    _add_output_args(p, "output folder (default: the --resume folder, else runs/<model>-<dataset>-repair-<time>)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("dataset", help="print a dataset's class names and long-tailed training counts")
    p.add_argument("name", help="cifar10lt | cifar100lt | digitslt | imagefolder")
    _add_dataset_args(p, named=False)  # the name is the positional argument: no second way to give it
    p.add_argument("--groups", default="thirds", choices=["thirds", "shots"],
                   help="head/medium/tail rule: thirds of classes by count, or shots (>100, <20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("report", help="render HTML/PDF reports from saved results.json")
    p.add_argument("results", help="results.json (with --compare: the repair's before run, or the first model)")
    p.add_argument("--compare", nargs="+", metavar="RESULTS",
                   help="more results.json files: a repair's after run (a before/after report), or other models "
                        "audited on the same points (a side-by-side model comparison, up to 8 models)")
    p.add_argument("--out", help="output folder (default: next to RESULTS)")
    p.add_argument("--format", default="html,pdf", help="html, pdf or html,pdf")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _eps_args(text: str) -> dict:
    """--eps: one radius, or several for a curve (the largest is the headline budget)."""
    from audit.values import parse_number

    if "," not in text:
        return {"eps": parse_number(text, "--eps")}
    from audit.values import parse_eps_list

    budgets = parse_eps_list(text)
    return {"eps": budgets[-1][0],
            "eps_curve": tuple(t for _, t in budgets) if len(budgets) > 1 else ()}


def _audit_config(args: argparse.Namespace):
    from audit.config import AuditConfig, parse_number_list
    from audit.models.wrapper import parse_floats

    return AuditConfig(
        model=args.model, dataset=args.dataset, checkpoint=args.checkpoint, num_classes=args.num_classes,
        mean=parse_floats(args.mean, "--mean"), std=parse_floats(args.std, "--std"), input_size=args.input_size,
        imbalance=args.imbalance, data_root=args.data_root, class_counts=args.class_counts,
        n_per_class=args.n_per_class, group_rule=args.groups,
        suite=args.suite,
        attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()) if args.attacks is not None else None,
        norm=args.norm, **_eps_args(args.eps), steps=args.steps,
        step_size=args.step_size,
        temperatures=tuple(parse_number_list(args.temperature, "--temperature")) if args.temperature else None,
        restarts=args.restarts, queries=args.queries, probe=args.probe, targets=args.targets,
        target_ranking=args.target_ranking, rank_candidates=args.rank_candidates,
        black_box=getattr(args, "black_box", False), sanity=getattr(args, "sanity", False),
        independent=args.independent, seed=args.seed, subset_seed=args.subset_seed, device=args.device, batch_size=args.batch_size,
        amp=args.amp, out=args.out, quiet=args.quiet, download=not args.no_download,
        allow_large_input=args.allow_large_input, threads=args.threads, workers=args.workers,
        labels=getattr(args, "labels", None), fail_under=getattr(args, "fail_under", None),
        calibration_steps=args.calibration_steps, force=args.force, weights=args.weights,
        corruptions=getattr(args, "corruptions", None) or (), severities=getattr(args, "severity", "all"),
        corruption_root=getattr(args, "corruption_root", None),
    )


def _formats(args: argparse.Namespace) -> list[str]:
    return [f for f, off in (("html", args.no_html), ("pdf", args.no_pdf)) if not off]


def cmd_audit(args: argparse.Namespace) -> int:
    from audit.summary import format_summary
    from tailaudit import run_audit
    from audit.textsafe import terminal_safe

    config = _audit_config(args)
    if (config.mean is None) != (config.std is None):
        from audit.errors import ConfigError

        raise ConfigError("--mean and --std go together; pass both (comma-separated, one value per channel)")
    formats = _formats(args)
    run = run_audit(config, formats=formats)
    if not _is_main():  # [distributed] rank 0 prints
        return 0
    print(terminal_safe(format_summary(run.results)))
    for report in (run.out_dir / f"report.{fmt}" for fmt in formats):
        if report.is_file():
            print(terminal_safe(f"report: {report}"))
    print(terminal_safe(f"results: {run.results_path}"))
    return _gate_exit(run.results)


def _gate_exit(results: "AuditResults") -> int:
    """0, or 3 with one stderr line per failing --fail-under condition."""
    from audit.gate import EXIT_GATE, gate_failures
    from audit.textsafe import terminal_safe

    gate = results.gate
    if gate is None or gate.passed:
        return 0
    for line in gate_failures(gate):
        print(terminal_safe(line), file=sys.stderr)
    return EXIT_GATE


def cmd_repair(args: argparse.Namespace) -> int:
    from audit.values import parse_number
    from reat_finetune import RepairConfig, RepairInterrupted, format_comparison
    from tailaudit import run_repair

    audit = _audit_config(args)
    audit.out = None
    config = RepairConfig(
        audit=audit, method=args.method, **_budget_kwargs(args), batch_size=args.batch_size_train,
        schedule=args.schedule, train_eps=parse_number(args.train_eps, "--train-eps") if args.train_eps else None,
        train_steps=args.train_steps, train_step_size=args.train_step_size, tail_penalty=args.tail_penalty,
        tail_lambda=args.tail_lambda, margin=args.margin, val_fraction=args.val_fraction, val_root=args.val_root,
        val_split=args.val_split, augment=args.augment, min_clean_kept=args.min_clean_kept,
        guide=args.guide, lbgat_beta=args.lbgat_beta, smoothing=args.smoothing, smoothing_head=args.smoothing_head,
        smoothing_tail=args.smoothing_tail, smoothing_shape=args.smoothing_shape, eps_schedule=args.eps_schedule,
        eps_per_class=args.eps_per_class, shift_bn=args.shift_bn,
        out=args.out, resume=args.resume, formats=tuple(_formats(args)), quiet=args.quiet,
        sync_bn=not args.no_sync_bn,
    )
    try:
        run = run_repair(config)
    except RepairInterrupted as exc:
        if _is_main():
            print(f"tailaudit: {exc}", file=sys.stderr)
        return 130
    from audit.summary import verdict_lines
    from audit.textsafe import terminal_safe

    if not _is_main():  # [distributed] rank 0 prints
        return 0
    print(terminal_safe(format_comparison(run)))
    after = [ln for ln in verdict_lines(run.after)[1:] if "next: Repair it" not in ln and "repair command:" not in ln]  # not the repaired file again
    print(terminal_safe("\n".join(["", "audit of the model handed back:"] + after)))
    for path in run.reports.values():
        print(terminal_safe(f"report: {path}"))
    print(terminal_safe(f"repaired model: {run.model_path}"))
    print(terminal_safe(f"results: {run.before_path} (before), {run.after_path} (after)"))
    return _gate_exit(run.after)


def cmd_dataset(args: argparse.Namespace) -> int:
    from audit.data import class_groups, load_dataset

    data = load_dataset(args.name, imbalance=args.imbalance, data_root=args.data_root,
                        class_counts=args.class_counts, download=not args.no_download)
    desc = data.describe()
    desc["groups"] = class_groups(list(data.train_counts), rule=args.groups)  # null for a balanced set
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        from audit.textsafe import inline_safe, terminal_safe

        for name, count, group in zip(data.class_names, data.train_counts, desc["groups"]):
            print(terminal_safe(f"{inline_safe(name):<24} {count:>7}  {group or '-'}"))
        print(f"total {sum(data.train_counts)} training images, {len(data.test_labels)} test images")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from audit.errors import ConfigError
    from tailaudit import render

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("html", "pdf")]
    if bad or not formats:
        raise ConfigError(f"--format takes html, pdf or html,pdf, got {args.format!r}")
    paths = render(args.results, out=args.out, formats=formats, compare=args.compare)
    from audit.textsafe import terminal_safe

    for path in paths.values():
        print(terminal_safe(str(path)))
    return 0


def _is_main() -> bool:
    from audit import distributed

    return distributed.is_main()


COMMANDS = {"audit": cmd_audit, "repair": cmd_repair, "dataset": cmd_dataset, "report": cmd_report}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    from audit import distributed

    quiet_rank = distributed.launcher_rank() != 0  # [distributed] other ranks print nothing but errors
    level = (logging.ERROR if quiet_rank else logging.DEBUG if debug
             else logging.WARNING if getattr(args, "quiet", False) else logging.INFO)  # --quiet: warnings only
    for name in ("audit", "reports", "reat_finetune", "tailaudit"):
        logging.getLogger(name).setLevel(level)
    from audit.errors import TailAuditError, command_line
    from audit.textsafe import one_line, route_warnings, stdout_broken, stdout_gone, tolerant_stdout

    tolerant_stdout()
    route_warnings(debug)
    if getattr(args, "threads", None):
        from audit.lifecycle import apply_threads

        apply_threads(args.threads)
    where = f"[rank {distributed.launcher_rank()}] " if distributed.launched() else ""
    try:
        if quiet_rank and args.command not in ("audit", "repair"):
            return 0  # [distributed] nothing to share out: rank 0 does it alone
        with command_line():  # errors keep their flags (a Python caller gets API arguments: tailaudit/wording.py)
            code = COMMANDS[args.command](args)
            if sys.stdout is not None:
                sys.stdout.flush()  # a full or closed stdout fails here, in the handlers below, not at exit
        return code
    except distributed.PeerFailed as exc:  # [distributed] the failing rank reports its own error
        if not quiet_rank:
            print(f"tailaudit: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except TailAuditError as exc:
        if debug:
            raise
        print(f"tailaudit: {where}error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if not stdout_broken(exc):
            raise
        return stdout_gone(exc)
    except KeyboardInterrupt:
        if not quiet_rank:
            print("tailaudit: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
