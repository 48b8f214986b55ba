"""The typed side files of a repair folder and of every output folder: ``repair.json``, ``training_log.json`` and
the folder manifest (``.tailaudit-manifest.json``), as dataclasses on the codec of :mod:`audit.contract.codec`.

The repair (reat_finetune/repair.py, train.py, outcome.py) builds these and writes them through the codec; the
reports and the Python API read their attributes. Fields are declared in the order the files have always been
written, so a file written through the models is the one written before them, key for key. Keys a newer tailaudit
adds are kept (each section's ``extra``). Files written by earlier versions are upgraded in one place,
:func:`upgrade`, before they are typed (a ``selection`` that was a sentence, an outcome's stored ``label``).

Sections that are open by nature (the repair's ``config``, the ``environment``, the learning-rate search, one
per-evaluation row of the training log) keep their JSON as written and name the values the reports read as typed
properties (:class:`OpenSection`): each key is spelled here once.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional

from .codec import from_json, to_json

OUTCOME_CODES = ("improved", "partly-improved", "no-change", "not-improved", "input-kept")
OUTCOME_LABELS = {"improved": "Improved", "partly-improved": "Partly improved", "no-change": "No measurable change",
                  "not-improved": "Not improved", "input-kept": "Not improved (input kept)"}


def _extra() -> Any:
    return field(default_factory=dict, repr=False, metadata={"extra": True})


def _omit(default: Any = None) -> Any:
    return field(default=default, metadata={"omit_none": True})


def _number(v: Any) -> Optional[float]:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _text(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


class _Key:
    """A key of an open section read as a typed attribute (``lr = _Key(_number)`` reads ``values["lr"]``, None
    when absent or of another type): one declaration per key instead of a property each."""

    def __init__(self, convert: Callable[[Any], Any], key: Optional[str] = None) -> None:
        self.convert, self.key = convert, key

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = self.key or name

    def __get__(self, section: Any, owner: Optional[type] = None) -> Any:
        return self if section is None else self.convert(section.values.get(self.key))


@dataclass(frozen=True)
class OpenSection:
    """A JSON object whose keys vary by writer (a config, an environment): kept exactly as written, with the keys
    the reports read offered as typed properties by the subclasses."""

    json_by_hand: ClassVar[bool] = True
    values: dict[str, Any] = field(default_factory=dict)

    def _value(self, key: str) -> Any:
        return self.values.get(key)

    def to_json(self) -> dict[str, Any]:
        return dict(self.values)

    @classmethod
    def from_json(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise TypeError(f"should be an object, found {type(data).__name__}")
        return cls(dict(data))


class RepairSettings(OpenSection):
    """``repair.json`` → ``config``: the repair's settings as ``RepairConfig.to_dict`` wrote them."""

    method = _Key(_text)  # Optional[str]
    epochs = _Key(_number)  # Optional[int]
    lr = _Key(_number)  # Optional[float]
    schedule = _Key(_text)  # Optional[str]
    batch_size = _Key(_number)  # Optional[int]
    train_steps = _Key(_number)  # Optional[int]

    @property
    def train_eps(self) -> Any:
        """The training radius as given (a number, or older files' text such as "8/255")."""
        return self._value("train_eps")

    @property
    def train_step_size(self) -> Any:
        return self._value("train_step_size")

    @property
    def resolved_train_eps(self) -> Optional[float]:
        """The training radius after "auto" was resolved (None: not recorded)."""
        return _number((self._value("resolved") or {}).get("train_eps"))

    @property
    def resolved_train_step_size(self) -> Optional[float]:
        return _number((self._value("resolved") or {}).get("train_step_size"))

    eps_schedule = _Key(_text)  # Optional[str]

    @property
    def eps_per_class(self) -> bool:
        return self._value("eps_per_class") is True

    smoothing = _Key(_text)  # Optional[str]
    smoothing_head = _Key(_number)  # Optional[float]
    smoothing_tail = _Key(_number)  # Optional[float]
    smoothing_shape = _Key(_text)  # Optional[str]
    guide = _Key(_text)  # Optional[str]
    lbgat_beta = _Key(_number)  # Optional[float]


class Environment(OpenSection):
    """Versions and device a repair ran with (``audit.run.lifecycle.environment`` plus the distributed setup)."""

    device = _Key(_text)  # Optional[str]
    device_name = _Key(_text)  # Optional[str]


class LrSearch(OpenSection):
    """The learning-rate search's record (``lr_search``): its grid and the steps it took, among others."""

    steps = _Key(_number)  # Optional[int]

    @property
    def grid(self) -> list[float]:
        return [g for g in self._value("grid") or [] if _number(g) is not None]


class Divergence(OpenSection):
    """One recovery from a diverged training step (``divergences[i]``)."""

    lr_to = _Key(_number)  # Optional[float]
    why = _Key(_text)  # Optional[str]


class Evaluation(OpenSection):
    """One evaluation of the training log (``epochs[i]``; step 0 is the input model): keys vary by method."""

    epoch = _Key(_number)  # Optional[float]
    step = _Key(_number)  # Optional[int]
    lr = _Key(_number)  # Optional[float]
    time_s = _Key(_number)  # Optional[float]
    loss = _Key(_number)  # Optional[float]
    val_clean_acc = _Key(_number)  # Optional[float]
    val_robust_acc = _Key(_number)  # Optional[float]


@dataclass(kw_only=True)
class Budget:
    """The optimiser-step budget (``reat_finetune.budget.Budget.to_dict``)."""

    steps_total: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    source: Optional[str] = None  # "auto" or "flag"
    rule: Optional[str] = None
    eval_steps: Optional[list[int]] = None
    search_steps: Optional[int] = _omit()  # older files: no learning-rate search
    epochs: Optional[float] = None
    epochs_exact: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Validation:
    """The images the checkpoint was chosen on: where they came from and how many per class."""

    source: Optional[str] = None  # "evaluation" or "val-root"; None: older repairs (held-out training images)
    per_class_counts: Optional[list[int]] = None
    missing_classes: list[str] = field(default_factory=list)
    missing_class_indices: list[int] = field(default_factory=list)
    fallback: Optional[str] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Selection:
    """How the kept checkpoint was chosen (``reat_finetune.selection.ValidationPlan.to_dict`` plus the floors)."""

    rule: Optional[str] = None
    metric: Optional[str] = None
    chosen_epoch: Optional[float] = None
    chosen_step: Optional[int] = None
    input_kept: Optional[bool] = None
    guard_metric: Optional[str] = None
    note: Optional[str] = None
    validation: Optional[Validation] = None
    floors: Optional[dict[str, Any]] = None
    guard_floor: Optional[float] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Split:
    """``repair.json`` → ``split``: how many images trained, chose the checkpoint and were audited."""

    n_train: Optional[int] = None
    n_val: Optional[int] = None
    n_guard: Optional[int] = None
    n_audit: Optional[int] = _omit()
    selection_source: Optional[str] = _omit()
    selection_root: Optional[str] = None
    train_counts: Optional[list[int]] = None
    val_counts: Optional[list[int]] = None
    audit_counts: Optional[list[int]] = _omit()
    selection_indices: Optional[list[int]] = None
    seed: Optional[int] = None
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class Headline:
    """The before or after audit's headline figures (fractions), as ``repair.json`` records them."""

    clean: Optional[float] = None
    clean_balanced: Optional[float] = None
    robust_worst_case: Optional[float] = None
    robust_balanced: Optional[float] = None
    robust_groups: Optional[dict[str, Optional[float]]] = None
    clean_groups: Optional[dict[str, Optional[float]]] = None
    worst_class: Optional[int] = None
    worst_class_robust: Optional[float] = None
    extra: dict[str, Any] = _extra()

    def group(self, name: str, robust: bool = True) -> Optional[float]:
        """A group's (head, medium, tail) robust or clean accuracy; None when the set has no such group."""
        return ((self.robust_groups if robust else self.clean_groups) or {}).get(name)


@dataclass(kw_only=True)
class Timings:
    """``repair.json`` → ``timings`` (seconds)."""

    fine_tune_s: Optional[float] = None
    fine_tune_session_s: Optional[float] = _omit()  # this session's share of a resumed run
    total_s: Optional[float] = None
    resumed: Optional[bool] = _omit()
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PairedTest:
    """McNemar's exact test of one figure on the points both audits scored (``reat_finetune.significance``)."""

    n: int
    before: int
    after: int
    gained: int
    lost: int
    p_value: float
    alpha: Optional[float] = None
    change: Optional[float] = None  # after minus before, as a share of the points
    significant: bool = False
    direction: str = "none"  # "up", "down" or "none" (not significant)
    extra: dict[str, Any] = _extra()


@dataclass(kw_only=True)
class PairedTests:
    """The repair's paired tests: worst-case robust, rare-class robust (None without rare classes) and clean."""

    test: str
    alpha: float
    n_points: int
    worst_case: PairedTest
    clean: PairedTest
    tail: Optional[PairedTest] = None
    extra: dict[str, Any] = _extra()


@dataclass(frozen=True)
class RepairOutcome:
    """What a repair achieved (``repair.json`` → ``outcome``): the verdict and the figures behind it (fractions;
    changes are after − before). ``label`` is the code in words, derived, written for readers of the file."""

    json_by_hand: ClassVar[bool] = True  # ``label`` is written beside the fields, never read back

    code: str
    headline: str
    reasons: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    clean_kept: Optional[float] = None  # after clean / before clean on the test points
    worst_case_change: Optional[float] = None
    tail_change: Optional[float] = None
    clean_change: Optional[float] = None
    tests: Optional[PairedTests] = None  # None: not tested (repairs before the paired tests, or no per-point files)
    significance: Optional[str] = None  # the tests in one plain sentence (page 1)

    def __post_init__(self) -> None:
        if self.code not in OUTCOME_CODES:
            raise ValueError(f"repair outcome {self.code!r} is not one of {', '.join(OUTCOME_CODES)}")

    @property
    def label(self) -> str:
        return OUTCOME_LABELS[self.code]

    @property
    def improved(self) -> bool:
        """True only when the worst-case gain is significant and the clean accuracy was kept."""
        return self.code == "improved"

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "headline": self.headline, "reasons": list(self.reasons),
                "actions": list(self.actions), "clean_kept": self.clean_kept,
                "worst_case_change": self.worst_case_change, "tail_change": self.tail_change,
                "clean_change": self.clean_change, **({} if self.tests is None and self.significance is None else {
                    "tests": to_json(self.tests), "significance": self.significance}), "label": self.label}

    def to_dict(self) -> dict[str, Any]:
        return self.to_json()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RepairOutcome":
        return cls(code=str(data["code"]), headline=str(data.get("headline") or ""),
                   reasons=[str(r) for r in data.get("reasons") or []],
                   actions=[str(a) for a in data.get("actions") or []], clean_kept=data.get("clean_kept"),
                   worst_case_change=data.get("worst_case_change"), tail_change=data.get("tail_change"),
                   clean_change=data.get("clean_change"),
                   tests=from_json(Optional[PairedTests], data.get("tests"), "$.outcome.tests"),
                   significance=_text(data.get("significance")))


@dataclass(kw_only=True)
class RepairDocument:
    """``repair.json``: what a repair did and achieved (written by reat_finetune/repair.py, read by the report)."""

    tool: dict[str, Any] = field(default_factory=lambda: {"name": "tailaudit"})
    created: Optional[str] = None
    config: RepairSettings = field(default_factory=RepairSettings)
    method: Optional[str] = None
    description: Optional[str] = None
    tail_penalty: Optional[str] = None
    feature_source: Optional[str] = None
    best_epoch: Optional[float] = None
    best_step: Optional[int] = None
    epochs: Optional[float] = None
    lr: Optional[float] = None
    lr_search: Optional[LrSearch] = None
    divergences: list[Divergence] = field(default_factory=list)
    sampler: Optional[str] = None
    sampler_rule: Optional[str] = None
    budget: Optional[Budget] = None
    selection: Optional[Selection] = None
    model: dict[str, Any] = field(default_factory=dict)  # input, repaired file, export plan and parity check
    split: Split = field(default_factory=Split)
    before: Optional[Headline] = None
    after: Optional[Headline] = None
    outcome: Optional[RepairOutcome] = None  # None: repairs before outcomes were stored
    timings: Timings = field(default_factory=Timings)
    environment: Environment = field(default_factory=Environment)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = _extra()

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RepairDocument":
        """A parsed repair.json of any tailaudit version (checked against its schema first)."""
        return from_json(cls, upgrade(data, "repair"))


@dataclass(kw_only=True)
class TrainingLog:
    """``training_log.json``: the fine-tuning run, one entry per evaluation (``epochs``; step 0 = the input model)."""

    method: Optional[str] = None
    tail_penalty: Optional[str] = None
    feature_source: Optional[str] = None
    sampler: Optional[str] = None
    sampler_rule: Optional[str] = None
    lr: Optional[float] = None
    lr_given: Optional[float] = None
    lr_search: Optional[LrSearch] = None
    divergences: list[Divergence] = field(default_factory=list)
    schedule: Optional[str] = None
    batch_size: Optional[int] = None
    budget: Optional[Budget] = None
    selection: Optional[Selection] = None
    metrics_note: Optional[str] = None
    train_counts_split: Optional[list[int]] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    best_epoch: Optional[float] = None
    best_step: Optional[int] = None
    best_val_robust_acc: Optional[float] = None
    input_kept: Optional[bool] = None
    epochs: list[Evaluation] = field(default_factory=list)
    warnings: Optional[list[str]] = _omit()  # set by the repair once the run is over
    extra: dict[str, Any] = _extra()

    @property
    def trained(self) -> list[Evaluation]:
        """The evaluations after training began (epoch above 0), the input model's left out."""
        return [e for e in self.epochs if (e.epoch or 0) > 0]

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrainingLog":
        """A parsed training_log.json of any tailaudit version (checked against its schema first)."""
        return from_json(cls, upgrade(data, "training_log"))


@dataclass(kw_only=True)
class Manifest:
    """``.tailaudit-manifest.json``: the files of an output folder tailaudit wrote (bare names)."""

    tool: str = "tailaudit"
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = _extra()


def upgrade(document: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The one migration point of repair.json (``kind`` "repair") and training_log.json ("training_log"): a file
    of an earlier version in this version's shape, the caller's object unchanged.

    Before budgets were recorded (before 2026-11-25), ``selection`` was the rule as a sentence: it becomes
    ``{"rule": sentence}``. Outcomes carry their ``label`` (derived from the code, never read). Keys an older
    writer did not write read as None or empty (each field's default).
    """
    out = copy.deepcopy(dict(document))
    if isinstance(out.get("selection"), str):
        out["selection"] = {"rule": out["selection"]}
    if kind == "repair" and isinstance(out.get("outcome"), dict):
        out["outcome"].pop("label", None)
    for key in _LISTS[kind]:  # the schema lets a list be null; the typed form has an empty one
        if key in out and out[key] is None:
            out[key] = []
    validation = (out.get("selection") or {}).get("validation")
    if isinstance(validation, dict) and validation.get("missing_classes", []) is None:
        validation["missing_classes"] = []
    for key in _SECTIONS[kind]:  # a null section reads as an empty one
        if key in out and out[key] is None:
            del out[key]
    return out


_LISTS = {"repair": ("divergences", "warnings"), "training_log": ("divergences", "epochs")}
_SECTIONS = {"repair": ("tool", "config", "environment", "model", "split", "timings", "files"), "training_log": ()}
