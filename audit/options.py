"""Every option declared once: flag, type, bounds, help, the commands that take it and the config field it fills.

From these records come the argparse arguments (``cli.py``), the checks of :class:`~audit.config.AuditConfig`
and :class:`~reat_finetune.config.RepairConfig` (so the command line and the Python API accept and refuse
the same values, with the same words) and the option reference ``docs/options.md``
(``scripts/options_doc.py``). A default is the config field's default: the dataclass is its one source.

The audit's options are declared here; the repair's fine-tuning options in ``reat_finetune/options.py``
(registered into the same table, timm-registry style).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from . import bounds as B
from .errors import ConfigError
from .values import NORMS, eps_text, parse_number

# help groups of `audit --help` / `repair --help`, in this order (key -> title)
GROUPS = {"model": "model", "data": "data", "threat": "threat model", "attacks": "attacks",
          "corruptions": "natural corruptions", "outputs": "outputs", "run": "run",
          "fine-tuning": "fine-tuning (defaults are for fine-tuning a pretrained model, not training from scratch)"}
COMMANDS = ("audit", "repair", "dataset", "report")
KINDS = ("int", "float", "choice", "text", "switch", "floats", "names", "eps")
CHECKED = ("int", "float", "choice", "floats", "eps")  # kinds whose values the configs check against the record
_NO_DEFAULT = object()
_CONFIGS: dict[str, type] = {}  # "audit" -> AuditConfig, "repair" -> RepairConfig (registered by their modules)

Bound = Union[int, float, str, None]  # a number, or the name of a limit in audit/bounds.py
Choices = Union[Sequence[str], Callable[[], Sequence[str]], None]


@dataclass(frozen=True)
class Option:
    """One option. ``flag`` is ``--name`` (or a positional's name); ``field`` the config field it fills."""

    flag: str
    help: str
    commands: tuple[str, ...] = ("audit", "repair")
    group: Optional[str] = None  # key of GROUPS; None: the parser's own options
    config: Optional[str] = "audit"  # "audit" (AuditConfig), "repair" (RepairConfig), None (the command reads it)
    field: Optional[str] = None  # default: the flag's name with '_' for '-'
    kind: str = "text"
    lo: Bound = None
    hi: Bound = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Choices = None
    const: Any = True  # switch: the value the flag sets
    default: Any = _NO_DEFAULT  # only for config=None options; a config option's default is the field's
    metavar: Optional[str] = None
    exclusive: Optional[str] = None  # options sharing a key exclude each other (argparse mutually exclusive)
    dest: Optional[str] = None  # argparse dest (default: derived from the flag)
    nargs: Optional[str] = None
    doc: str = ""  # what docs/options.md adds to the help text

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.flag}: unknown kind {self.kind!r}")
        unknown = set(self.commands) - set(COMMANDS)
        if unknown:
            raise ValueError(f"{self.flag}: unknown commands {sorted(unknown)}")

    # -- names ---------------------------------------------------------------------------
    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    @property
    def name(self) -> str:
        """The config field (or argparse dest) this option fills."""
        return self.field or self.flag.lstrip("-").replace("-", "_")

    @property
    def argparse_dest(self) -> str:
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    # -- values --------------------------------------------------------------------------
    def limits(self) -> tuple[Any, Any]:
        """(lo, hi) with names resolved from audit/bounds.py."""
        lo, hi = (getattr(B, b) if isinstance(b, str) else b for b in (self.lo, self.hi))
        return lo, hi

    def choice_list(self) -> list[str]:
        c = self.choices() if callable(self.choices) else self.choices
        return [str(v) for v in (c or ())]

    @property
    def default_value(self) -> Any:
        """The config field's default (the dataclass is its one source), or the option's own for config=None."""
        if self.config is None or self.config not in _CONFIGS:
            return None if self.default is _NO_DEFAULT else self.default
        f = {f.name: f for f in dataclasses.fields(_CONFIGS[self.config])}[self.name]
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None

    def parse(self, text: str) -> Any:
        """Command-line text -> the typed value the config holds (ConfigError naming the flag otherwise)."""
        if self.kind == "int":
            return self.check(text)
        if self.kind == "float":
            return self.check(parse_number(text, self.flag))
        if self.kind in ("floats", "eps"):
            parts = [t for t in str(text).split(",") if t.strip()]
            if not parts:
                raise ConfigError(f"{self.flag} is empty; give one number or a comma-separated list")
            return self.check(tuple(parse_number(t, self.flag) for t in parts))
        if self.kind == "names":
            return tuple(t.strip() for t in str(text).split(",") if t.strip())
        return self.check(text) if self.kind == "choice" else text

    def check(self, value: Any) -> Any:
        """``value`` (a typed value, as from Python) within this option's bounds; ConfigError naming the flag."""
        lo, hi = self.limits()
        if self.kind == "int":
            return B.check_int(value, self.flag, lo, hi)
        if self.kind == "float":
            return B.check_float(value, self.flag, lo, hi, lo_open=self.lo_open, hi_open=self.hi_open)
        if self.kind == "choice":
            if value not in self.choice_list():
                raise ConfigError(f"{self.flag} must be one of {', '.join(self.choice_list())}, got {value!r}")
            return value
        if self.kind in ("floats", "eps"):
            if isinstance(value, (int, float, str)):  # one value of a list option (the config's eps)
                return self.check((value,))[0]
            values = tuple(B.check_float(parse_number(v, self.flag) if isinstance(v, str) else v, self.flag, lo, hi,
                                         lo_open=self.lo_open, hi_open=self.hi_open) for v in value)
            if self.kind == "eps":
                if len({round(v, 12) for v in values}) != len(values):
                    raise ConfigError(f"{self.flag} {','.join(eps_text(v) for v in values)} lists the same radius "
                                      "twice; give each budget once")
                values = tuple(sorted(values))
            return values
        return value

    def argparse_type(self) -> Optional[Callable[[str], Any]]:
        if self.kind in ("switch", "text") or (self.kind == "choice"):
            return None

        def parse(text: str) -> Any:
            try:
                return self.parse(text)
            except ConfigError as exc:
                raise argparse.ArgumentTypeError(_strip_flag(str(exc))) from None

        parse.__name__ = self.kind  # argparse names the type in its messages
        return parse

    def values_text(self) -> str:
        """What the option takes, in words (docs/options.md)."""
        lo, hi = self.limits()
        if self.kind == "int":
            return f"whole number {lo}..{hi}"
        if self.kind in ("float", "floats", "eps"):
            span = f"{'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
            example = ", e.g. 8/255" if self.kind == "eps" else ""
            return ("number in " if self.kind == "float" else "numbers in ") + span + example
        if self.kind == "choice":
            return " | ".join(self.choice_list())
        if self.kind == "switch":
            return "switch"
        return self.metavar or "text"


def _strip_flag(message: str) -> str:
    """argparse already prefixes "argument --x:"; keep the rest of the sentence."""
    head, sep, rest = message.partition(" must ")
    return f"must {rest}" if sep and head.startswith("-") else message


class OptionTable:
    """The registry of options: declared in order, looked up by command and config."""

    def __init__(self) -> None:
        self._options: list[Option] = []

    def declare(self, *options: Option) -> None:
        for opt in options:
            for cmd in opt.commands:
                if any(o.flag == opt.flag and cmd in o.commands for o in self._options):
                    raise ValueError(f"{opt.flag} is declared twice for {cmd}")
            self._options.append(opt)

    def __iter__(self):  # noqa: ANN204
        return iter(self._options)

    def for_command(self, command: str) -> list[Option]:
        return [o for o in self._options if command in o.commands]

    def for_config(self, config: str) -> list[Option]:
        """Each config field's option once (the first declared; --out is declared for audit and for repair)."""
        seen: dict[str, Option] = {}
        for o in self._options:
            if o.config == config and o.name not in seen:
                seen[o.name] = o
        return list(seen.values())

    def get(self, flag: str, command: str = "audit") -> Option:
        for o in self.for_command(command):
            if o.flag == flag:
                return o
        raise KeyError(flag)


OPTIONS = OptionTable()


def register_config(name: str, cls: type) -> type:
    """Make ``cls`` the config whose fields the options named ``config=name`` fill (their defaults come from it)."""
    _CONFIGS[name] = cls
    return cls


def check_config(config: Any, which: str, error: type[Exception] = ConfigError,
                 skip: Iterable[str] = ()) -> None:
    """Check every declared option's field of ``config`` against its record; ``error`` names the flag."""
    for opt in OPTIONS.for_config(which):
        if opt.kind not in CHECKED or opt.name in skip:
            continue
        value = getattr(config, opt.name)
        if value is None and opt.default_value is None:
            continue
        try:
            opt.check(value)
        except ConfigError as exc:
            raise error(str(exc)) from None


def config_values(args: argparse.Namespace, which: str, command: str) -> dict[str, Any]:
    """The parsed command line as keyword arguments of the config ``which`` (the options ``command`` takes)."""
    out: dict[str, Any] = {}
    for opt in OPTIONS.for_command(command):
        if opt.config != which or not hasattr(args, opt.argparse_dest):
            continue
        value = getattr(args, opt.argparse_dest)
        if opt.kind == "eps" and isinstance(value, tuple):  # several radii: a curve, the largest the headline
            out["eps"], out["eps_curve"] = value[-1], (value if len(value) > 1 else ())
            continue
        out[opt.name] = value
    return out


def add_arguments(parser: argparse.ArgumentParser, command: str,
                  group: Callable[[argparse.ArgumentParser, Optional[str]], Any]) -> None:
    """Add ``command``'s options to ``parser``; ``group(parser, key)`` gives the help group to add to."""
    exclusive: dict[str, Any] = {}
    for opt in OPTIONS.for_command(command):
        target = group(parser, opt.group)
        if opt.exclusive:
            if opt.exclusive not in exclusive:
                exclusive[opt.exclusive] = target.add_mutually_exclusive_group()
            target = exclusive[opt.exclusive]
        kw: dict[str, Any] = {"help": opt.help}
        if opt.metavar:
            kw["metavar"] = opt.metavar
        if opt.nargs:
            kw["nargs"] = opt.nargs
        if opt.positional:
            target.add_argument(opt.flag, type=opt.argparse_type(), **kw)
            continue
        kw["dest"] = opt.argparse_dest
        if opt.kind == "switch":
            kw.update(action="store_const", const=opt.const)
            if opt.config is None or opt.exclusive:
                kw["default"] = None if opt.exclusive else (not opt.const)
            else:
                kw["default"] = opt.default_value
        else:
            default = opt.default_value
            if opt.kind == "eps" and default is not None:
                default = (default,)
            kw.update(type=opt.argparse_type(), default=default)
            if opt.kind == "choice":
                kw["choices"] = opt.choice_list()
        target.add_argument(opt.flag, **kw)


# -- the audit's options ---------------------------------------------------------------------------------
_MODEL, _DATA, _THREAT, _ATTACKS = "model", "data", "threat", "attacks"
_CORR, _OUT, _RUN = "corruptions", "outputs", "run"
AUDIT_REPAIR, WITH_DATASET = ("audit", "repair"), ("audit", "repair", "dataset")


def _suites() -> list[str]:
    from .attacks import SUITES

    return SUITES.names()


def _suite_help() -> str:
    from .attacks import SUITES

    return "; ".join(f"{n}: {SUITES.get(n).description}" for n in SUITES.names())


def _attack_kinds() -> str:
    from .attacks import ATTACKS

    return ", ".join(f"{n} ({ATTACKS.get(n).display_name})" for n in ATTACKS.names())


def _standard_probe() -> int:
    """Square's probe in the standard suite (the suite registry is its one source)."""
    from .attacks import SUITES

    return next(int(o.get("probe", 0)) for k, o in SUITES.get("standard").attacks if k == "square")


def declare_audit_options() -> None:
    """The audit's options (and the dataset and report commands'), in --help order."""
    if any(o.flag == "--eps" for o in OPTIONS):
        return
    OPTIONS.declare(
        Option("model", "path/to/model.onnx or timm:ARCH (with --checkpoint)", group=_MODEL),
        Option("--checkpoint", "state dict for timm:ARCH (.pth/.pt/.safetensors; never unpickled)", group=_MODEL,
               doc="read with `torch.load(weights_only=True)`; a dict wrapping `state_dict`/`model` and `module.` "
                   "prefixes are accepted"),
        Option("--pretrained", "timm:ARCH with the hub's pretrained weights (downloads them; its own class count)",
               group=_MODEL, field="weights", kind="switch", const="pretrained", exclusive="weights", dest="weights"),
        Option("--random-weights", "timm:ARCH with random weights, on purpose (a timm model without weights is "
               "refused)",
               group=_MODEL, field="weights", kind="switch", const="random", exclusive="weights", dest="weights"),
        Option("--force", "run the attacks even when the clean check finds the model cannot be graded on this data (it "
               "stops with exit code 4 otherwise)", group=_RUN, kind="switch"),
        Option("--num-classes", "default: the dataset's class count", group=_MODEL, kind="int", lo=1, hi="MAX_CLASSES"),
        Option("--mean", "per-channel mean the model expects, e.g. 0.4914,0.4822,0.4465 (folded into the wrapper)",
               group=_MODEL, kind="floats", lo=-B.MAX_NORM_STD, hi=B.MAX_NORM_STD),
        Option("--std", "per-channel std the model expects, e.g. 0.2471,0.2435,0.2616", group=_MODEL, kind="floats",
               lo=0, hi=B.MAX_NORM_STD, lo_open=True),
        Option("--input-size", "square input size the model was trained at", group=_MODEL, kind="int", lo=1,
               hi=10**6, doc="default: ONNX: the graph's; timm: the data's most common size when the architecture runs "
                             "at it, else its config size. Images are decoded straight to the model's size (bilinear)"),
        Option("--dataset", "cifar10lt | cifar100lt | digitslt | imagefolder (default digitslt)", group=_DATA),
        Option("--imbalance", "rho = smallest/largest class (default 0.01)", commands=WITH_DATASET, group=_DATA,
               kind="float", lo=0, hi=1, lo_open=True),
        Option("--data-root", "folder with the data (torchvision CIFAR layout or train/<class>/, test/<class>/)",
               commands=WITH_DATASET, group=_DATA),
        Option("--class-counts", "JSON file with the training counts the model was really trained on, per class: for "
               "cifar10lt/cifar100lt (instead of tailaudit's own sampled long-tail profile, which page 1 otherwise "
               "describes as such) and for an imagefolder with only an evaluation folder", commands=WITH_DATASET,
               group=_DATA),
        Option("--no-download", "never try to download datasets", commands=WITH_DATASET, group=_DATA, field="download",
               kind="switch", const=False, dest="download"),
        Option("--n-per-class", "stratified seeded subset: K test images per class", group=_DATA, kind="int", lo=1,
               hi="MAX_N_PER_CLASS"),
        Option("--groups", "head/medium/tail rule: thirds of classes by count, or shots (>100, <20)",
               commands=WITH_DATASET, group=_DATA, field="group_rule", kind="choice", choices=("thirds", "shots")),
    )
    _declare_attack_options()
    _declare_run_options()
    _declare_other_commands()


def _declare_attack_options() -> None:
    OPTIONS.declare(
        Option("--suite", f"attack suite (default quick). {_suite_help()}", group=_ATTACKS, kind="choice",
               choices=_suites),
        Option("--attacks", f"explicit comma-separated cascade instead of a suite, from: {_attack_kinds()}; or none "
               "with --corruptions for a corruption-only audit (docs/corruptions.md)", group=_ATTACKS, kind="names"),
        Option("--steps", "iterations of every gradient attack (default: each attack's own, PGD 20, APGD 100; at most "
               f"{B.MAX_STEPS})", group=_ATTACKS, kind="int", lo=1, hi="MAX_STEPS"),
        Option("--restarts", f"APGD runs per point (default 1; thorough 5; at most {B.MAX_RESTARTS})", group=_ATTACKS,
               kind="int", lo=1, hi="MAX_RESTARTS"),
        Option("--queries", f"Square queries per point (default 5000; at most {B.MAX_QUERIES})", group=_ATTACKS,
               kind="int", lo=1, hi="MAX_QUERIES"),
        Option("--probe", "Square: a point stops after this many queries unless Square is doing better on it than the "
               f"gradient attacks did (standard suite {_standard_probe()}; 0 = full --queries for every point)",
               group=_ATTACKS, kind="int", lo=0, hi="MAX_QUERIES"),
        Option("--targets", f"APGD-T target classes (default 9, C-1 when fewer; at most {B.MAX_TARGETS})",
               group=_ATTACKS, kind="int", lo=1, hi="MAX_TARGETS"),
        Option("--target-ranking", "how APGD-T picks its --targets classes: logit = highest clean logits (AutoAttack, "
               "the default); malt = MALT's estimated distance to each class boundary over --rank-candidates",
               group=_ATTACKS, kind="choice", choices=("logit", "malt")),
        Option("--rank-candidates", "MALT: classes ranked per point, the top ones by clean logit (default 100; one "
               "gradient each)", group=_ATTACKS, kind="int", lo=1, hi="MAX_TARGETS"),
        Option("--norm", "threat model: linf limits every pixel's change to --eps; l2 limits the whole image's change "
               "(default linf)", group=_THREAT, kind="choice", choices=NORMS),
        Option("--eps", "radius of the threat model in [0,1] pixels (accepts 8/255); several (1/255,2/255,4/255,8/255) "
               "audit a robustness curve, the largest is the headline", group=_THREAT, kind="eps", lo=0, hi=1,
               lo_open=True),
        Option("--step-size", "PGD step size alpha (default eps/4, i.e. 2/255 at 8/255)", group=_ATTACKS, kind="float",
               lo=0, hi=1, lo_open=True),
        Option("--temperature", "Temperature-PGD T, one value or a list to sweep (default 0.5; thorough 0.1,0.5,2,5)",
               group=_ATTACKS, field="temperatures", kind="floats", lo=B.TEMPERATURE_RANGE[0],
               hi=B.TEMPERATURE_RANGE[1]),
        Option("--independent", "run every attack on every clean-correct point (head-to-head) instead of the cascade",
               group=_ATTACKS, kind="switch"),
        Option("--seed", "attack randomness, 0 .. 2**63-1: a point's random start depends only on (seed, attack, its "
               "test-set index)", group=_ATTACKS, kind="int", lo=0, hi="SEED_MAX",
               doc="so results are identical for any `--batch-size`, batch order or split of the points"),
        Option("--subset-seed", "picks the --n-per-class subset, 0 .. 2**63-1 (default 0)", group=_DATA, kind="int",
               lo=0, hi="SEED_MAX"),
        Option("--calibration-steps", "calibration under attack: steps of the deterministic PGD after the cascade that "
               "measures how confident the attacked answers can be made (default 20; 0 = clean calibration only)",
               group=_ATTACKS, kind="int", lo=0, hi="MAX_STEPS", metavar="N"),
    )


def _declare_run_options() -> None:
    OPTIONS.declare(
        Option("--device", "auto | cpu | cuda | cuda:N (auto: the GPU when torch sees one)", group=_RUN),
        Option("--batch-size", "test images attacked at once (default 256); results do not depend on it, memory does",
               group=_RUN, kind="int", lo=1, hi="MAX_BATCH"),
        Option("--amp", "bf16 autocast for the attack (GPU)", group=_RUN, kind="choice", choices=("off", "bf16")),
        Option("--quiet", "no progress bar", group=_RUN, kind="switch"),
        Option("--threads", "CPU threads for torch (intra- and inter-op); recorded in results. Identical results need "
               "the same threads, device and library versions", group=_RUN, kind="int", lo=1, hi="MAX_THREADS",
               doc="default half the usable cores; recorded in `results.json` (`config.threads`, "
                   "`environment.torch_threads`)"),
        Option("--allow-large-input", f"allow model inputs above {B.MAX_INPUT_SIDE} pixels a side (memory grows "
               "with it)",
               group=_RUN, kind="switch"),
        Option("--workers", "DataLoader processes decoding images (default 0: in the main process); pinned memory on "
               "GPU", group=_RUN, kind="int", lo=0, hi="MAX_WORKERS"),
        Option("--black-box", "ONNX only: no gradients, Square on onnxruntime alone (an upper bound; automatic when "
               "the "
               "model cannot be converted)", commands=("audit",), group=_ATTACKS, kind="switch"),
        Option("--sanity", "also check that robust accuracy falls to about zero at a huge radius (gradient masking)",
               commands=("audit",), group=_ATTACKS, kind="switch"),
        Option("--corruptions", "also audit natural corruptions per class: common (the 15 of ImageNet-C/CIFAR-10-C), "
               "all (+ speckle_noise, gaussian_blur, spatter, saturate) or names (default: off)", commands=("audit",),
               group=_CORR, metavar="common|all|NAME[,NAME...]"),
        Option("--severity", "corruption severities, one, a list (1,3,5) or all (default all)", commands=("audit",),
               group=_CORR, field="severities", metavar="1..5|all"),
        Option("--corruption-root", "read released CIFAR-10-C/CIFAR-100-C .npy files (or ImageNet-C folders) instead "
               "of generating", commands=("audit",), group=_CORR, metavar="DIR"),
        Option("--labels", "the model's class names in output order (one per line, or a JSON list); default: the "
               "dataset's order", group=_MODEL, metavar="FILE",
               doc="must be exactly the dataset's class names; the wrapper re-orders the logits (and onnxruntime's) "
                   "into the dataset's order"),
        Option("--fail-under", "CI gate: exit 3 when a figure misses its threshold; keys clean, robust, balanced, "
               "worst-class, tail (floors) and max-gap (ceiling); values 0.4 or 40%%", group=_OUT,
               metavar="KEY=VALUE,...", doc="`robust=40` is refused as ambiguous"),
        Option("--out", "output folder (default runs/<model>-<dataset>-<time>)", commands=("audit",), group=_OUT),
        Option("--no-html", "do not write report.html", group=_OUT, config=None, kind="switch"),
        Option("--no-pdf", "do not write report.pdf", group=_OUT, config=None, kind="switch"),
    )


def _declare_other_commands() -> None:
    OPTIONS.declare(
        Option("name", "cifar10lt | cifar100lt | digitslt | imagefolder", commands=("dataset",), config=None),
        Option("--json", "print JSON", commands=("dataset",), config=None, kind="switch"),
        Option("results", "results.json (with --compare: the repair's before run, or the first model)",
               commands=("report",), config=None),
        Option("--compare", "more results.json files: a repair's after run (a before/after report), or other models "
               "audited on the same points (a side-by-side model comparison, up to 8 models)", commands=("report",),
               config=None, metavar="RESULTS", nargs="+"),
        Option("--out", "output folder (default: next to RESULTS)", commands=("report",), config=None),
        Option("--format", "html, pdf or html,pdf", commands=("report",), config=None, default="html,pdf"),
    )


# -- the reference (docs/options.md) ---------------------------------------------------------------------
def _default_text(opt: Option) -> str:
    value = opt.default_value
    if opt.kind == "switch":
        return "off"
    if value is None or value == () or value == "":
        return "—"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if opt.kind in ("eps", "float") and isinstance(value, float):
        return eps_text(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("%%", "%").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def reference_table(command: str, only: Optional[Callable[[Option], bool]] = None) -> str:
    """``command``'s options as Markdown tables, one per help group: option, values, default, meaning."""
    lines: list[str] = []
    opts = [o for o in OPTIONS.for_command(command) if only is None or only(o)]
    for key in [None, *GROUPS]:
        rows = [o for o in opts if o.group == key]
        if not rows:
            continue
        lines += ["", f"**{GROUPS[key] if key else 'arguments and options'}**", "",
                  "| option | takes | default | meaning |", "|---|---|---|---|"]
        for o in rows:
            meaning = o.help + (f"; {o.doc}" if o.doc else "")
            lines.append(f"| `{o.flag}` | {_cell(o.values_text())} | {_cell(_default_text(o))} | {_cell(meaning)} |")
    return "\n".join(lines[1:])
