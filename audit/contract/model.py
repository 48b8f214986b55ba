"""The typed results of an audit: what ``results.json`` holds, as dataclasses.

:class:`AuditResults` is what an audit produces (audit/pipeline.py builds it), what
:func:`audit.contract.schema.load_results` returns for a file, and what the terminal summary, the exports,
the verdict rules, the repair and the reports read. ``results.json`` is its serialisation
(:meth:`AuditResults.to_json`, checked against the shipped schema before it is written;
:meth:`AuditResults.from_json` after the schema check and the migration of older files).
Field meanings: docs/results_schema.md. Sections whose content is open by nature (the model
loader's ``info``, the dataset's ``info``, the run's ``config`` and ``environment``) stay dicts.

Keys a newer tailaudit adds are kept (each section's ``extra``) and written back unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

from ..values import eps_text as _eps_text
from .codec import from_json, to_json

# APGD-T's default count of classes MALT ranks (audit/attacks/apgd_t.py); files written before APGD-T recorded its
# ranking are migrated with it (audit/contract/schema.py), so they compare with newer runs
APGDT_CANDIDATES = 100
CODES = ("robust", "partly-robust", "weakly-robust", "not-robust", "not-meaningful", "not-graded")
LABELS = {"robust": "Robust", "partly-robust": "Partly robust", "weakly-robust": "Weakly robust",
          "not-robust": "Not robust", "not-meaningful": "Not meaningful", "not-graded": "Not graded"}

Interval = Optional[list[float]]  # a 95% interval [low, high], None when there is nothing to count


def _extra() -> Any:
    return field(default_factory=dict, repr=False, metadata={"extra": True})


def _omit(default: Any = None) -> Any:
    return field(default=default, metadata={"omit_none": True})


def _key(name: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"key": name}) if default is not dataclasses.MISSING \
        else field(metadata={"key": name})


@dataclass(frozen=True)
class Verdict:
    """The one verdict of an audit, as ``results["verdict"]`` stores it (computed by audit/checks/verdict.py).

    ``band`` is the grade before a rare-class or uneven qualifier lowered it, ``survival`` the share
    of correct answers that survive (both None when not meaningful). ``computed_on_load`` names the
    tailaudit version that graded a file written before verdicts were stored (``audit.checks.verdict.grade_on_load``);
    it is never written. The label is the code in words (:data:`LABELS`), derived, not stored twice.
    """

    json_by_hand: ClassVar[bool] = True  # older files carry ``label``; it is derived here, never read

    code: str
    headline: str
    reasons: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    band: Optional[str] = None
    survival: Optional[float] = None
    qualifier: Optional[str] = None
    upper_bound: bool = False  # only score-based (black-box) attacks ran: the grade is "at most" this
    computed_on_load: Optional[str] = None

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"verdict code {self.code!r} is not one of {', '.join(CODES)}")

    @property
    def label(self) -> str:
        """The code in words; "At most …" for an upper bound (black-box), never read as a white-box grade."""
        if self.upper_bound and self.code not in ("not-meaningful", "not-graded"):
            return f"At most {LABELS[self.code].lower()}"
        return LABELS[self.code]

    @property
    def graded(self) -> bool:
        """False when no grade is given: the model does not work on the data, or the attacks could not work."""
        return self.code not in ("not-meaningful", "not-graded")

    @property
    def statement(self) -> str:
        """The headline without its leading grade, for a page or line that shows the grade beside it (badge)."""
        prefix = f"{self.label}: "
        return self.headline[len(prefix):] if self.headline.startswith(prefix) else self.headline

    @property
    def meaningful(self) -> bool:
        """False for ``not-meaningful``: the model does not work on this data and gets no grade."""
        return self.code != "not-meaningful"

    def to_json(self) -> dict[str, Any]:
        out = {"code": self.code, "headline": self.headline, "reasons": list(self.reasons),
               "actions": list(self.actions), "band": self.band, "survival": self.survival,
               "qualifier": self.qualifier}
        if self.upper_bound:
            out["upper_bound"] = True
        if self.computed_on_load is not None:
            out["computed_on_load"] = self.computed_on_load
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Verdict":
        """From a validated results file (older files also carry ``label``, derived here from the code)."""
        return cls(code=str(data["code"]), headline=str(data.get("headline") or ""),
                   reasons=tuple(str(r) for r in data.get("reasons") or ()),
                   actions=tuple(str(a) for a in data.get("actions") or ()), band=data.get("band"),
                   survival=data.get("survival"), qualifier=data.get("qualifier"),
                   upper_bound=bool(data.get("upper_bound", False)), computed_on_load=data.get("computed_on_load"))


# -- model, data, threat model ---------------------------------------------------------------

@dataclass(kw_only=True)
class Tool:
    name: str = "tailaudit"
    version: Optional[str] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Preprocessing:
    """What the wrapper does before the model: input size (C, H, W), normalisation, layout."""

    input_size: list[int]
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    layout: Optional[str] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Parity:
    """The converted ONNX model against onnxruntime on real images (and the adversarial re-checks)."""

    n: int
    max_abs_logit_diff: Optional[float] = None
    max_rel_logit_diff: Optional[float] = _omit()
    argmax_agreement: Optional[float] = None
    tolerance: Optional[float] = None
    providers: Optional[list[str]] = None
    adversarial_rescored: Optional[int] = _omit()
    adversarial_rejected: Optional[int] = _omit()
    survivors_broken: Optional[int] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ModelInfo:
    spec: str
    path: Optional[str] = None
    sha256: Optional[str] = None
    format: Optional[str] = None
    arch: Optional[str] = None
    num_classes: Optional[int] = None
    preprocessing: Optional[Preprocessing] = None
    parity: Optional[Parity] = None
    gradient_access: Optional[bool] = None
    info: Optional[dict[str, Any]] = None  # what the loader noted (exporter, opsets, graph passes, warnings)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class DatasetInfo:
    name: str
    root: Optional[str] = None
    imbalance: Optional[float] = None
    balanced: Optional[bool] = None
    classes: list[str]
    train_counts: list[int] = field(default_factory=list)
    groups: dict[str, list[int]] = field(default_factory=dict)  # head / medium / tail: class indices
    group_rule: Optional[str] = None
    n_eval: int
    n_per_class: Optional[int] = None
    test_size: Optional[int] = None
    eval_indices_sha256: Optional[str] = None
    info: Optional[dict[str, Any]] = None  # how the data were built (source, seeds, profile)
    extra: dict[str, Any] = _extra()

    @property
    def counts_source(self) -> Optional[str]:
        """Where the training counts came from when they were given (``--class-counts``); None otherwise."""
        source = (self.info or {}).get("counts_source")
        return None if source is None else str(source)


@dataclass(kw_only=True)
class InputFit:
    """How the images were fitted to the model (audit/inputs.py)."""

    data_shape: list[int] = field(default_factory=list)
    model_shape: list[int] = field(default_factory=list)
    channel_conversion: Optional[str] = None
    resize_factor: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ThreatModel:
    norm: str
    eps: float
    eps_text: Optional[str] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class AttackEntry:
    """One attack of the cascade as it ran: kind, name and its parameters (flat)."""

    kind: Optional[str] = None
    name: str
    display_name: Optional[str] = _omit()
    gradient_free: Optional[bool] = _omit()
    extra: dict[str, Any] = _extra()  # steps, step_size, temperature, queries, ... (the attack's Params)

    def param(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)


# -- sanity --------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ZeroGradientAttack:
    points: int
    per_class: list[int]
    flagged_classes: list[str]
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ZeroGradient:
    per_attack: dict[str, ZeroGradientAttack] = field(default_factory=dict)
    flagged_classes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class SquareProbe:
    attack: str
    probe_queries: int
    full_queries: int
    attacked: int
    full_budget_points: int
    per_class: list[int]
    classes: list[str]
    reruns: Optional[int] = _omit()
    rerun_points: Optional[int] = _omit()
    rerun_per_class: Optional[list[int]] = _omit()
    rerun_classes: Optional[list[str]] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class SquareOnly:
    attacks: list[str] = field(default_factory=list)
    points: int = 0
    per_class: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    checked: bool = False
    probe: Optional[SquareProbe] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Randomised:
    points: int = 0
    per_class: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    max_abs_logit_diff: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class LargeEps:
    attack: Optional[dict[str, Any]] = _omit()
    norm: str
    eps: float
    n: int
    robust_acc: Optional[float]
    robust_per_class: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    passed: bool
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Sanity:
    """Gradient-masking checks per class (audit/checks/sanity.py)."""

    zero_gradient: ZeroGradient = field(default_factory=ZeroGradient)
    square_only: SquareOnly = field(default_factory=SquareOnly)
    randomised: Randomised = field(default_factory=Randomised)
    large_eps: Optional[LargeEps] = None
    passed: Optional[bool] = None
    extra: dict[str, Any] = _extra()


# -- calibration ---------------------------------------------------------------------------

@dataclass(kw_only=True)
class Rate:
    k: int
    rate: Optional[float]
    ci95: Interval = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Reliability:
    count: list[int]
    confidence: list[Optional[float]]
    accuracy: list[Optional[float]]
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ReliabilitySet:
    overall: Reliability
    groups: dict[str, Reliability] = field(default_factory=dict)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class CalibrationBlock:
    """Confidence against accuracy for a set of points (a group): ECE, over-confidence, confident-error rates."""

    n: int
    accuracy: Optional[float] = None
    mean_confidence: Optional[float] = None
    ece: Optional[float]
    over_confidence: Optional[float] = None
    n_wrong: Optional[int] = None
    confident_error_50: Optional[Rate] = None
    confident_error_90: Optional[Rate] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ClassCalibrationBlock(CalibrationBlock):
    """One class's block, with the ECE over the points *predicted* as the class and their number."""

    ece_by_pred: Optional[float] = None
    n_pred: Optional[int] = None


@dataclass(kw_only=True)
class CalibrationSummaryBlock(CalibrationBlock):
    """All points: the block, the mean of the classes' ECE, the groups' blocks and the reliability diagrams."""

    ece_class_mean: Optional[float] = None
    groups: dict[str, CalibrationBlock] = field(default_factory=dict)
    reliability: Optional[ReliabilitySet] = None


@dataclass(kw_only=True)
class CalibrationProcedure:
    bins: int
    thresholds: list[float] = field(default_factory=list)
    steps: int
    norm: Optional[str] = None
    eps: Optional[float] = None
    step_size: Optional[float] = None
    random_start: Optional[bool] = None
    attacked: Optional[bool] = None
    not_attacked_because: Optional[str] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Calibration:
    """``summary.calibration``: how the confidences were measured and the clean / attacked figures."""

    procedure: CalibrationProcedure
    clean: CalibrationSummaryBlock
    attacked: Optional[CalibrationSummaryBlock] = None
    cascade_missed: Optional[int] = None
    unreached: Optional[int] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ClassCalibration:
    clean: ClassCalibrationBlock
    attacked: Optional[ClassCalibrationBlock] = None
    extra: dict[str, Any] = _extra()


# -- the corruption audit (--corruptions; audit/corruptions/) --------------------------------

SEVERITY_KEYS = ("1", "2", "3", "4", "5")  # a class's corruption entry keys its cells by severity, beside "mean"


@dataclass(kw_only=True)
class CorruptionCell:
    """One class at one corruption and severity: accuracy, its 95% interval, the drop from clean, ECE, confident
    errors (wrong with confidence > 0.9)."""

    accuracy: Optional[float]
    ci95: Interval
    drop: Optional[float] = None
    ece: Optional[float] = None
    confident_error: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ClassCorruption:
    """One class under one corruption: a cell per audited severity ("1".."5") and ``mean``, the accuracy averaged
    over them. The JSON holds both in one object (cells first), so this class writes its own form."""

    json_by_hand: ClassVar[bool] = True

    severities: dict[str, CorruptionCell] = field(default_factory=dict)
    mean: Optional[float] = None
    extra: dict[str, Any] = _extra()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: to_json(v) for k, v in self.severities.items()}
        out["mean"] = self.mean
        out.update({k: to_json(v) for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ClassCorruption":
        return cls(severities={k: from_json(CorruptionCell, v, f"$.{k}") for k, v in data.items()
                               if k in SEVERITY_KEYS},
                   mean=data.get("mean"),
                   extra={k: v for k, v in data.items() if k not in SEVERITY_KEYS and k != "mean"})


@dataclass(kw_only=True)
class SeverityFigures:
    """One corruption at one severity over all audited points: pooled and balanced accuracy, ECE, group means."""

    accuracy: Optional[float]
    ci95: Interval
    balanced: Optional[float] = None
    ece: Optional[float] = None
    confident_error: Optional[float] = None
    groups: Optional[dict[str, Optional[float]]] = _omit()  # per group name (head / medium / tail)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class CorruptionFigures:
    """One corruption: its family, the figures per severity, the mean over severities, the weakest class (mean
    over severities), the group means and the accuracy lost from clean (``relative_error``)."""

    family: Optional[str] = _omit()
    severities: dict[str, SeverityFigures]  # per severity "1".."5"
    mean_accuracy: Optional[float]
    worst_class: Optional[int] = None
    worst_class_accuracy: Optional[float] = None
    groups: Optional[dict[str, Optional[float]]] = _omit()  # per group name
    relative_error: Optional[float] = None
    extra: dict[str, Any] = _extra()

    def group(self, name: str) -> Optional[float]:
        return (self.groups or {}).get(name)


@dataclass(kw_only=True)
class CorruptionSummary:
    """``summary.corruptions``: the figures over every corruption, each corruption's, and their provenance (how the
    images were made); ``note`` compares the classes corruption and the attacks hurt (audit/corruptions/story.py).
    Fields in the order audit/corruptions/ writes them (figures, provenance, then the note)."""

    clean_accuracy: Optional[float] = None
    mean_accuracy: Optional[float]
    relative_mce: Optional[float] = None
    groups: Optional[dict[str, Optional[float]]] = _omit()  # per group name: mean accuracy under corruption
    group_drop: Optional[dict[str, Optional[float]]] = _omit()  # per group name: accuracy lost from clean
    per_corruption: dict[str, CorruptionFigures]  # per corruption name, in registry order
    source: str  # "generated" or "official"
    library: Optional[str] = None
    parameters: Optional[str] = _omit()
    names: list[str]
    severities: list[int]
    seed: Optional[int] = None
    input_side: Optional[list[int]] = None
    generated_side: Optional[list[int]] = None
    images: Optional[int] = _omit()
    seconds: Optional[float] = _omit()
    note: Optional[str] = _omit()
    differs: Optional[bool] = _omit()
    extra: dict[str, Any] = _extra()

    def group(self, name: str) -> Optional[float]:
        """Mean accuracy under corruption of a group (head / medium / tail); None without it."""
        return (self.groups or {}).get(name)

    def lost(self, name: str) -> Optional[float]:
        """Accuracy a group lost from clean under corruption; None without it."""
        return (self.group_drop or {}).get(name)


# -- per class and summary -----------------------------------------------------------------

@dataclass(kw_only=True)
class ClassResult:
    """One class: counts, clean and robust accuracy per attack (with ``worst_case``) and their intervals."""

    index: int
    name: str
    train_count: int
    group: Optional[str]
    n_eval: int
    clean_acc: Optional[float]
    clean_ci95: Interval = None
    robust_acc: dict[str, Optional[float]]
    robust_ci95: dict[str, Interval] = field(default_factory=dict)
    broken_by: dict[str, int] = field(default_factory=dict)
    weight_norm: Optional[float] = None
    calibration: Optional[ClassCalibration] = _omit()
    corruptions: Optional[dict[str, ClassCorruption]] = _omit()  # --corruptions: per corruption name
    extra: dict[str, Any] = _extra()

    @property
    def worst_case(self) -> Optional[float]:
        return self.robust_acc.get("worst_case")


@dataclass(kw_only=True)
class Spearman:
    rho: Optional[float]
    p: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class ClassSummary:
    """Across classes: balanced ``mean``, pooled ``overall``, worst/best class, spread, group means, Spearman."""

    mean: Optional[float]
    overall: Optional[float] = None
    worst: Optional[float] = _omit()
    worst_class: Optional[int] = _omit()
    best: Optional[float] = _omit()
    best_class: Optional[int] = _omit()
    gap: Optional[float] = _omit()
    std: Optional[float] = _omit()
    groups: Optional[dict[str, Optional[float]]] = _omit()
    spearman: Optional[Spearman] = _omit()
    extra: dict[str, Any] = _extra()

    @property
    def headline(self) -> Optional[float]:
        """The figure a page shows: the pooled ``overall`` (older files: the balanced ``mean``)."""
        return self.overall if self.overall is not None else self.mean

    def group(self, name: str) -> Optional[float]:
        return (self.groups or {}).get(name)


@dataclass(kw_only=True)
class Flow:
    true: int
    pred: int
    count: int
    fraction: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Confusion:
    matrix: list[list[int]]
    top_flows: list[Flow] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Summary:
    clean: ClassSummary
    robust: dict[str, ClassSummary]  # per attack name, and ``worst_case``
    head_tail_gap: Optional[dict[str, Optional[float]]] = None
    weight_norm_spearman: Optional[Spearman] = None
    confusion: Optional[Confusion] = None
    clean_confusion: Optional[list[list[int]]] = _omit()
    calibration: Optional[Calibration] = _omit()
    corruptions: Optional[CorruptionSummary] = _omit()  # --corruptions: figures and provenance (audit/corruptions/)
    extra: dict[str, Any] = _extra()

    @property
    def worst_case(self) -> ClassSummary:
        return self.robust["worst_case"]

    @property
    def robust_gap(self) -> Optional[float]:
        """Worst-case robust accuracy of the head group minus the tail group (None without both groups)."""
        return (self.head_tail_gap or {}).get("worst_case")


# -- optional sections ---------------------------------------------------------------------

@dataclass(kw_only=True)
class Timings:
    load_s: Optional[float] = None
    clean_s: Optional[float] = None
    attacks_s: dict[str, Optional[float]] = field(default_factory=dict)
    total_s: Optional[float] = None
    points_per_s: Optional[float] = None
    attacked_points: Optional[dict[str, int]] = _omit()
    calibration_s: Optional[float] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class OutputMap:
    output: int
    class_name: str = _key("class")
    assumed: Optional[str] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class LabelCheck:
    """The clean confusion matrix suggests the outputs are in another order (audit/checks/labels.py)."""

    suspected: bool
    accuracy_now: Optional[float] = None
    accuracy_mapped: Optional[float] = None
    mapping: list[OutputMap] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class GateCondition:
    key: str
    threshold: float
    value: Optional[float]
    passed: bool
    direction: Optional[str] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Gate:
    """``--fail-under``: each condition with its value, and whether all passed."""

    conditions: list[GateCondition]
    passed: bool
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class CurvePoint:
    """One budget of a robustness curve (``--eps`` with several values)."""

    eps: float
    eps_text: str
    overall: Optional[float]
    balanced: Optional[float]
    groups: Optional[dict[str, Optional[float]]] = _omit()
    per_class: list[Optional[float]]
    points_run: Optional[int] = _omit()
    extra: dict[str, Any] = _extra()


# -- the whole file ------------------------------------------------------------------------

@dataclass(kw_only=True)
class AuditResults:
    """One audit's results (``results.json``); see the module docstring."""

    schema_version: int
    tool: Optional[Tool] = None
    created: Optional[str] = None
    model: ModelInfo
    dataset: DatasetInfo
    input: Optional[InputFit] = _omit()
    threat_model: ThreatModel
    attacks: list[AttackEntry]
    suite: Optional[str] = _omit()
    suite_note: Optional[str] = None
    mode_label: Optional[str] = _omit()
    black_box_reason: Optional[str] = _omit()
    verdict_runtime: Optional[str] = _omit()
    sanity: Optional[Sanity] = _omit()
    mode: Optional[str] = _omit()
    seed: Optional[int] = _omit()
    subset_seed: Optional[int] = _omit()
    config: Optional[dict[str, Any]] = _omit()
    environment: Optional[dict[str, Any]] = _omit()
    timings: Optional[Timings] = _omit()
    per_class: list[ClassResult]
    summary: Summary
    warnings: list[str] = field(default_factory=list)
    files: Optional[dict[str, Optional[str]]] = _omit()
    label_check: Optional[LabelCheck] = _omit()
    curve: Optional[list[CurvePoint]] = _omit()
    verdict: Optional[Verdict] = _omit()
    gate: Optional[Gate] = _omit()
    extra: dict[str, Any] = _extra()

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` document (a plain dict; :func:`audit.contract.files.json_text` writes it)."""
        return to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AuditResults":
        """From a document already checked against the schema and migrated (audit/contract/schema.py)."""
        return from_json(cls, data)

    # -- what pages and rules ask most often
    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.classes)

    @property
    def worst_case(self) -> ClassSummary:
        return self.summary.robust["worst_case"]

    @property
    def attack_free(self) -> bool:
        """A corruption-only audit (``--attacks none``): no attack ran, so there is no robust figure at all."""
        return not self.attacks and self.suite == "none"

    @property
    def eps_text(self) -> str:
        return self.threat_model.eps_text or _eps_text(self.threat_model.eps)

    def group_of(self, name: str) -> list[int]:
        return list(self.dataset.groups.get(name) or [])


__all__ = ["AuditResults", "Verdict", "CODES", "LABELS", "ClassResult", "ClassSummary", "Summary", "Calibration",
           "CalibrationBlock", "Sanity", "AttackEntry", "ModelInfo", "DatasetInfo", "ThreatModel"]
