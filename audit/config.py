"""Dataclass configs for an audit; they are dumped verbatim into ``results.json``."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from . import bounds as B
from .attacks import ATTACKS, SUITES
from .errors import ConfigError
from .checks.gate import Condition, parse_fail_under
from .options import OPTIONS, check_config, declare_audit_options, register_config
from .values import (NO_ATTACKS, NORMS, AttackSpec, check_field_types, eps_text, parse_number, parse_number_list,
                     type_name)

__all__ = ["AuditConfig", "AttackSpec", "NORMS", "parse_number", "parse_number_list"]

@dataclass
class AuditConfig:
    """Everything an audit run needs; validated before any work starts."""

    model: Any  # str (a file, ``timm:ARCH``), an nn.Module or a LoadedModel (docs/python_api.md)
    dataset: Any = "digitslt"  # a registered name, or a torch Dataset / DataLoader / LTDataset
    checkpoint: Optional[str] = None
    num_classes: Optional[int] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    input_size: Optional[int] = None
    imbalance: float = 0.01
    data_root: Optional[str] = None
    class_counts: Optional[str] = None
    n_per_class: Optional[int] = None
    group_rule: str = "thirds"
    suite: str = "quick"
    attacks: Optional[Sequence[str]] = None  # explicit cascade (then the suite is "custom"); ["none"]: no attack
    norm: str = "linf"
    eps: float = 8 / 255  # the one source of truth for the budget; its text form is derived (eps_text)
    steps: Optional[int] = None  # None: each attack's default (PGD 20, APGD 100)
    step_size: Optional[float] = None
    temperatures: Optional[Sequence[float]] = None  # None: the suite's (0.5; thorough sweeps 0.1,0.5,2,5)
    restarts: Optional[int] = None
    queries: Optional[int] = None
    probe: Optional[int] = None  # Square's probe (None: the suite's; 0: full budget on every point)
    targets: Optional[int] = None
    target_ranking: Optional[str] = None  # APGD-T: "logit" (AutoAttack) or "malt" (None: the attack's default)
    rank_candidates: Optional[int] = None  # MALT: classes ranked per point
    black_box: bool = False
    sanity: bool = False
    independent: bool = False
    seed: int = 0
    subset_seed: int = 0
    device: str = "auto"
    batch_size: int = 256
    amp: str = "off"
    out: Optional[str] = None
    quiet: bool = False
    examples_per_class: int = 2
    parity_tol: float = 1e-3
    download: bool = True
    allow_large_input: bool = False
    threads: Optional[int] = None
    labels: Optional[str] = None  # --labels FILE: class names in the model's output order
    fail_under: Optional[str] = None  # --fail-under KEY=VALUE,...: the CI gate (audit/checks/gate.py)
    # --eps with several budgets: their radii, ascending (audit/curve.py); texts such as "8/255" are read too
    eps_curve: Sequence[Union[float, str]] = ()
    workers: int = 0  # DataLoader processes decoding images (results do not depend on it)
    force: bool = False  # --force: run the attacks even when the clean check says the model cannot be graded
    weights: Optional[str] = None  # timm:ARCH without --checkpoint: "pretrained" (the hub's) or "random"
    calibration_steps: int = 20  # PGD steps of the attacked-confidence pass (audit/calibration.py); 0: clean only
    # --corruptions: "common", "all" or names (audit/corruptions/); () = off; a list of names after validation
    corruptions: Union[str, Sequence[str]] = ()
    # --severity: 1..5, a list or "all"; a tuple after validation
    severities: Union[str, int, Sequence[int]] = (1, 2, 3, 4, 5)
    corruption_root: Optional[str] = None  # --corruption-root: released CIFAR-10-C/-100-C .npy or ImageNet-C folders
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Paths (``pathlib.Path``) and a ``torch.device`` from Python become the text the command line gives."""
        for name in ("model", "checkpoint", "data_root", "class_counts", "out", "labels"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if type(self.device).__name__ == "device" and type(self.device).__module__ == "torch":
            self.device = str(self.device)

    def validate(self) -> None:
        """Reject impossible settings with one actionable sentence each (bounds in audit/bounds.py)."""
        check_field_types(self)
        self._validate_objects()
        zero_ok = self.eps == 0.0 and bool(self.extra.get("allow_zero_eps"))  # the sanity run's clean pass
        self.eps_curve = OPTIONS.get("--eps").check(self.eps_curve) if self.eps_curve else ()
        check_config(self, "audit", skip=("eps",) if zero_ok else ())  # bounds and choices: audit/options.py
        if self.input_size is not None:
            B.check_input_size((3, self.input_size, self.input_size), f"--input-size {self.input_size}",
                               self.allow_large_input)
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"--mean has {len(self.mean)} values but --std has {len(self.std)}; give one "
                              "value per channel to both")
        self._validate_attacks()
        self._validate_weights()
        self.gate_conditions()
        self._validate_corruptions()

    def gate_conditions(self) -> Optional[list[Condition]]:
        """--fail-under's conditions, parsed once (the text stays the field: results.json echoes it)."""
        if not self.fail_under:
            return None
        cached = self.__dict__.get("_gate")
        if cached is None or cached[0] != self.fail_under:
            cached = self.__dict__["_gate"] = (self.fail_under, parse_fail_under(self.fail_under))
        return list(cached[1])

    def _validate_corruptions(self) -> None:
        """--corruptions/--severity/--corruption-root: known names, severities 1..5, the root only with names."""
        from .corruptions import parse_corruptions, parse_severities

        names = self.corruptions
        self.corruptions = parse_corruptions(names if isinstance(names, str) else list(names)) if names else ()
        sev = self.severities
        self.severities = parse_severities(sev if isinstance(sev, (str, int)) else list(sev))
        if self.corruption_root and not self.corruptions:
            raise ConfigError("--corruption-root needs --corruptions (common, all or names) to say which files to read")
        if self.corruption_root and not Path(self.corruption_root).is_dir():
            raise ConfigError(f"--corruption-root {self.corruption_root} is not a folder; give the folder holding "
                              "CIFAR-10-C's .npy files or ImageNet-C's <corruption>/<severity>/ folders")
        if self.corruptions and self.eps_curve:
            raise ConfigError("--corruptions and a robustness curve (several --eps) do not combine yet; audit the "
                              "corruptions with one --eps")

    def _validate_objects(self) -> None:
        """``model`` and ``dataset`` are what the audit can load: names, or objects from Python."""
        from torch import nn

        from .data.inmemory import is_dataset_object
        from .models.wrapper import LoadedModel

        empty = isinstance(self.model, str) and not self.model.strip()
        if not isinstance(self.model, (str, nn.Module, LoadedModel)) or empty:
            raise ConfigError(f"model= must be an nn.Module, an .onnx file path or \"timm:ARCH\", got "
                              f"{'an empty text' if empty else type_name(self.model)}")
        if not isinstance(self.dataset, str) and not is_dataset_object(self.dataset):
            pairs = isinstance(self.dataset, (list, tuple)) and bool(self.dataset)
            raise ConfigError("dataset= must be a dataset name or a torch Dataset / DataLoader, got "
                              f"{type_name(self.dataset)}"
                              + ("; put (image, label) pairs in a Dataset, e.g. "
                                 "TensorDataset(torch.stack(images), torch.tensor(labels))" if pairs else ""))

    def default_step_size(self) -> float:
        """alpha: 2/255 for the CIFAR default 8/255 at 20 steps; otherwise eps/4 (L-inf) or eps/4 (L2)."""
        if self.step_size is not None:
            return self.step_size
        return self.eps / 4

    @property
    def eps_text(self) -> str:
        """The budget as every page and suggested command writes it (``8/255``), derived from ``eps``."""
        return eps_text(self.eps)

    @property
    def attack_free(self) -> bool:
        """``--attacks none`` (``attacks=["none"]`` in Python): a corruption-only audit, no attack runs."""
        return self.attacks is not None and not isinstance(self.attacks, str) and list(self.attacks) == [NO_ATTACKS]

    @property
    def suite_name(self) -> str:
        """The suite recorded in results: the --suite name, "custom" for an explicit --attacks list, or "none"."""
        return NO_ATTACKS if self.attack_free else "custom" if self.attacks is not None else self.suite

    def _validate_weights(self) -> None:
        """A timm architecture needs weights: a checkpoint, the hub's (--pretrained) or, on purpose, random ones."""
        timm_arch = isinstance(self.model, str) and self.model.startswith("timm:")
        if self.weights not in (None, "pretrained", "random"):
            raise ConfigError(f"weights must be 'pretrained' or 'random', got {self.weights!r}")
        if self.weights and not timm_arch:
            raise ConfigError("--pretrained and --random-weights go with timm:ARCH models; an ONNX file or a module "
                              "carries its own weights")
        if timm_arch and self.weights and self.checkpoint:
            flag = "pretrained" if self.weights == "pretrained" else "random-weights"
            raise ConfigError(f"--checkpoint and --{flag} exclude each other; keep one")
        if timm_arch and not self.weights and not self.checkpoint:
            raise ConfigError(f"{self.model} has no trained weights without --checkpoint: pass --checkpoint FILE (the "
                              "trained weights), --pretrained for the hub's weights (downloads them), or "
                              "--random-weights to audit an untrained network on purpose")

    def _validate_attacks(self) -> None:
        if self.attacks is not None and not list(self.attacks):
            raise ConfigError(f"--attacks is empty; choose from {', '.join(ATTACKS.names())}, or none with "
                              "--corruptions")
        SUITES.get(self.suite)
        if self.attacks is not None and NO_ATTACKS in list(self.attacks):
            self._validate_attack_free()
            return
        for kind in self.attacks or ():
            ATTACKS.get(kind)
        if self.black_box and not (isinstance(self.model, str) and not self.model.startswith("timm:")):
            raise ConfigError("--black-box is for ONNX files (a timm or Python model gives gradients); drop "
                              "--black-box")
        for spec in self.attack_specs():
            spec.params.validate(spec.kind)

    def _validate_attack_free(self) -> None:
        """--attacks none: alone, and only with --corruptions (an audit must measure something)."""
        if list(self.attacks or ()) != [NO_ATTACKS]:
            raise ConfigError("--attacks none means no attack; do not list other attacks with it")
        if not self.corruptions:
            raise ConfigError("--attacks none needs --corruptions (common, all or names): an audit must measure "
                              "something")
        if self.sanity or self.black_box or self.eps_curve:
            flag = "--sanity" if self.sanity else "--black-box" if self.black_box else "several --eps"
            raise ConfigError(f"--attacks none runs no attack, so {flag} has nothing to act on; drop it")
        if self.fail_under:
            from .checks.gate import check_attack_free

            check_attack_free(self.gate_conditions())

    def attack_specs(self, *, black_box: Optional[bool] = None) -> list[AttackSpec]:
        """Expand the suite (or ``attacks``), the budget flags and ``temperatures`` into the ordered cascade.

        Flags set only the parameters an attack declares (``--queries`` means nothing to PGD).
        In black-box mode only score-based attacks run (Square when the suite has none).
        """
        if self.attack_free:
            return []
        black_box = self.black_box if black_box is None else black_box
        suite = SUITES.get(self.suite)
        entries = list(suite.attacks) if self.attacks is None else [(k, {}) for k in self.attacks]
        temps = tuple(self.temperatures) if self.temperatures else suite.temperatures
        if black_box:
            white = [k for k, _ in entries if not ATTACKS.get(k).gradient_free]
            if self.attacks is not None and white:
                raise ConfigError(f"--black-box runs score-based attacks only (square); drop {', '.join(white)} "
                                  "from --attacks")
            entries = [(k, o) for k, o in entries if ATTACKS.get(k).gradient_free] or [("square", {})]
        flags = {"steps": self.steps, "step_size": self.step_size, "restarts": self.restarts,
                 "queries": self.queries, "probe": self.probe, "targets": self.targets,
                 "ranking": self.target_ranking, "candidates": self.rank_candidates}
        specs: list[AttackSpec] = []
        for kind, overrides in entries:
            cls = ATTACKS.get(kind)
            names = cls.Params.field_names()
            params = dict(overrides)
            params.update({k: v for k, v in flags.items() if v is not None and k in names})
            if "step_size" in names and params.get("step_size") is None:
                params["step_size"] = self.default_step_size()
            if "temperature" in names:
                for t in temps:
                    name = kind if len(temps) == 1 else f"{kind}@T={t:g}"
                    specs.append(AttackSpec(kind, name, self.norm, self.eps,
                                            cls.Params(**params, temperature=float(t))))
            else:
                specs.append(AttackSpec(kind, kind, self.norm, self.eps, cls.Params(**params)))
        names_ = [s.name for s in specs]
        if len(set(names_)) != len(names_):
            raise ConfigError(f"--attacks lists an attack twice: {','.join(self.attacks or suite.kinds)}")
        return specs

    @property
    def model_name(self) -> str:
        """The model as results and messages name it: the path or ``timm:ARCH``, or ``python:<class>``."""
        return _object_name(self.model, "python:")

    @property
    def dataset_name(self) -> str:
        """The dataset as results and messages name it: the registered name, or the object's class."""
        return _object_name(self.dataset, "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings; in-memory models and datasets appear by name (never copied)."""
        d = asdict(replace(self, model=None, dataset=None)) | {"model": self.model_name, "dataset": self.dataset_name}
        d["eps_text"] = self.eps_text
        d["attacks"] = list(self.attacks) if self.attacks is not None else None
        d["temperatures"] = list(self.temperatures) if self.temperatures is not None else None
        d["eps_curve"] = [eps_text(parse_number(v, "--eps")) for v in self.eps_curve]  # texts, as results always had
        d["corruptions"] = list(self.corruptions)
        d["severities"] = list(self.severities)
        return d


def _object_name(value: Any, prefix: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(getattr(value, "spec", None), str):  # a LoadedModel names itself
        return value.spec
    if hasattr(value, "class_names") and isinstance(getattr(value, "name", None), str):  # an LTDataset
        return value.name
    obj = getattr(value, "dataset", value)  # a DataLoader is named by its dataset
    return f"{prefix}{type(obj).__qualname__}"


register_config("audit", AuditConfig)
declare_audit_options()
