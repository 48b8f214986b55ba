"""The repair's fine-tuning options, declared once into :data:`audit.options.OPTIONS` (see that module).

Their choices live here too, so that ``RepairConfig`` (which checks its fields against these records),
the command line and ``docs/options.md`` read one list.
"""
from __future__ import annotations

from audit.options import OPTIONS, Option, declare_audit_options

from .schedules import SCHEDULES as EPS_SCHEDULES

PENALTIES = ("pairwise", "reference", "off")
SCHEDULES = ("cosine", "step")
SAMPLERS = ("auto", "shuffle", "class-balanced")
AUGMENTS = ("none", "flip-crop")
GUIDES = ("frozen", "learnable")
SMOOTHINGS = ("off", "label-aware")
SMOOTHING_SHAPES = ("concave", "linear", "convex")
FORMATS = ("html", "pdf")

__all__ = ["AUGMENTS", "EPS_SCHEDULES", "FORMATS", "GUIDES", "PENALTIES", "SAMPLERS", "SCHEDULES", "SMOOTHINGS",
           "SMOOTHING_SHAPES", "declare_repair_options"]


def _methods() -> list[str]:
    from audit.registry import METHODS

    from . import methods as _m  # noqa: F401  (fills the registry)

    return METHODS.names()


def _tune(flag: str, help: str, **kw) -> Option:  # noqa: A002
    return Option(flag, help, commands=("repair",), group="fine-tuning", config="repair", **kw)


def declare_repair_options() -> None:
    """The fine-tuning options (once; the audit's are declared first, so they come first in --help)."""
    declare_audit_options()
    if any(o.flag == "--method" for o in OPTIONS):
        return
    T = _tune  # noqa: N806
    OPTIONS.declare(
        Option("--no-sync-bn", "under torchrun on GPUs: keep per-rank BatchNorm statistics instead of SyncBatchNorm",
               commands=("repair",), group="run", config="repair", field="sync_bn", kind="switch", const=False,
               dest="sync_bn"),
        T("--method", "reat: RBL counts + Balanced Softmax + tail feature penalty; at-bsl: Balanced Softmax only; "
          "pgd-at: cross-entropy; trades-bsl: TRADES with a Balanced Softmax natural term; lbgat: the adversarial "
          "logits follow the input model's clean ones; mislas: classifier + per-class scale on a frozen backbone; "
          "reslt: head/medium/tail branches folded into one layer (default reat)", kind="choice", choices=_methods),
        T("--train-steps-total", "fine-tuning budget in optimizer steps (batches); not to be confused with "
          "--train-steps, the PGD iterations of the training attack. Default: automatic, max(300, 10 epochs) steps",
          field="steps_total", kind="int", lo=1, hi="MAX_TRAIN_STEPS", metavar="N"),
        T("--epochs", "budget as whole passes over the training split instead of --train-steps-total (give one)",
          kind="int", lo=1, hi="MAX_EPOCHS"),
        T("--evaluations", "validation checkpoints spread through the budget; the best one is kept (default 10)",
          kind="int", lo=1, hi="MAX_EVALUATIONS", metavar="K"),
        T("--lr", "initial SGD learning rate, momentum 0.9, weight decay 5e-4, decayed by --schedule (default: a "
          "short search over 0.2, 0.05, 0.0125, 0.003 within the budget picks it)", kind="float", lo=0,
          hi="MAX_LR", lo_open=True, doc="the search is successive halving, at most 15% of the budget, skipped below "
                                          "160 steps (0.05 is used); [repair.md](repair.md)"),
        T("--grad-clip", "cap the gradient norm of each update at NORM (default off; docs/repair.md)", kind="float",
          lo=0, hi="MAX_COEFFICIENT", lo_open=True, metavar="NORM"),
        T("--sampler", "batch sampling: shuffle (each image once a pass), class-balanced (every class equally "
          "likely; Balanced Softmax then uses the uniform prior) or auto (class-balanced when the smallest class "
          "has 20+ training images, else shuffle) (default auto)", kind="choice", choices=SAMPLERS),
        T("--trades-beta", "weight of the KL term of --method trades-bsl (default 6)", kind="float", lo=0,
          hi="MAX_COEFFICIENT"),
        T("--schedule", "cosine decay per step, or x0.1 at 75%% and 90%% of the epochs (default cosine)",
          kind="choice", choices=SCHEDULES),
        T("--batch-size-train", "training batch size (default 128)", field="batch_size", kind="int", lo=2,
          hi="MAX_BATCH"),
        T("--train-eps", "training attack radius (default: --eps, e.g. 8/255)", kind="float", lo=0, hi=1,
          lo_open=True),
        T("--train-steps", "PGD iterations of the training attack per batch (default 10); the budget in optimizer "
          "steps is --train-steps-total", kind="int", lo=1, hi="MAX_STEPS"),
        T("--train-step-size", "training PGD step (default train eps / 4: 2/255 at 8/255)", kind="float", lo=0,
          hi=1, lo_open=True),
        T("--tail-penalty", "REAT tail feature penalty: pairwise (default), reference (the authors' code, collapsed "
          "to a scalar per anchor) or off", kind="choice", choices=PENALTIES),
        T("--tail-lambda", "coefficient of the tail feature penalty (default 1)", kind="float", lo=0,
          hi="MAX_COEFFICIENT"),
        T("--margin", "hinge margin on the KL of different-class pairs in the pairwise penalty (default 0.1)",
          kind="float", lo=0, hi="MAX_COEFFICIENT"),
        T("--val-fraction", "seeded share of each class's evaluation points set aside to pick the checkpoint; the "
          "audits report the other points (default 0.2)", kind="float", lo=0, hi=0.5, lo_open=True),
        T("--val-root", "pick the checkpoint on your own validation images, DIR/<class>/ (not training images), "
          "instead of carving them from the evaluation data", metavar="DIR",
          doc="refused when they hold training or evaluation files"),
        T("--val-split", "the same, naming a folder under --data-root (e.g. val)", metavar="NAME"),
        T("--min-clean-kept", "a fine-tuned checkpoint must keep this share of the input model's clean accuracy on "
          "the selection images (and not collapse) to replace it; otherwise the input model is returned (default "
          "0.8)", kind="float", lo=0, hi=1, doc="[repair.md](repair.md#checkpoint-selection), \"Eligibility\""),
        T("--guide", "lbgat: the input model guides as it is (frozen, default) or is trained alongside with "
          "Balanced Softmax at a tenth of --lr (learnable)", kind="choice", choices=GUIDES),
        T("--lbgat-beta", "lbgat: weight of KL(clean || adversarial) next to the guide's MSE (default 0: keeps the "
          "most clean accuracy)", kind="float", lo=0, hi=100),
        T("--smoothing", "MiSLAS label-aware smoothing on every method's label loss: more for frequent classes",
          kind="choice", choices=SMOOTHINGS),
        T("--smoothing-head", "smoothing of the most frequent class (default 0.3, MiSLAS's CIFAR-10-LT value)",
          kind="float", lo=0, hi=1, hi_open=True),
        T("--smoothing-tail", "smoothing of the rarest class (default 0)", kind="float", lo=0, hi=1, hi_open=True),
        T("--smoothing-shape", "profile of the smoothing over the class counts (default concave)", kind="choice",
          choices=SMOOTHING_SHAPES),
        T("--eps-schedule", "training radius ramped up from 0 over the first 30%% of the budget (warmup, the "
          "default), or at full strength from the first step (constant)", kind="choice",
          choices=tuple(EPS_SCHEDULES)),
        T("--eps-per-class", "RobustLT's class-wise training radii: larger for rarer classes, same mean over the "
          "images", kind="switch"),
        T("--shift-bn", "MiSLAS's shifted BatchNorm: re-estimate BatchNorm statistics of the kept model on "
          "class-balanced clean training batches before export (kept only if validation does not get worse)",
          kind="switch"),
        T("--augment", "training augmentation: none, or random flip + 4-pixel crop for natural images (default "
          "none)", kind="choice", choices=AUGMENTS),
        T("--resume", "continue a killed or interrupted run from DIR/checkpoint.pt", metavar="DIR",
          doc="refused for another model or dataset; ends bit-identical to an uninterrupted run with the same seed"),
        Option("--out", "output folder (default: the --resume folder, else runs/<model>-<dataset>-repair-<time>)",
               commands=("repair",), group="outputs", config="repair"),
    )
