#!/usr/bin/env python3
"""tailaudit command line: parse flags, call the Python API, map known errors to exit codes."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from audit.contract.model import AuditResults

EXIT_USAGE = 2


def _group(p: argparse.ArgumentParser, key: Optional[str]) -> Any:
    """The parser's help group ``key`` (created once, in :data:`GROUPS` order when :func:`_groups` ran first)."""
    from audit.options import GROUPS

    if key is None:
        return p
    groups = p.__dict__.setdefault("_tailaudit_groups", {})
    if key not in groups:
        groups[key] = p.add_argument_group(GROUPS[key])
    return groups[key]


def _groups(p: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """``p`` with ``command``'s declared options (audit/options.py), in help groups in :data:`GROUPS` order."""
    from audit.options import GROUPS, OPTIONS, add_arguments

    used = {o.group for o in OPTIONS.for_command(command)}
    for key in GROUPS:
        if key in used:
            _group(p, key)
    add_arguments(p, command, _group)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse that prints one line (not the whole usage) on bad flags, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from audit.textsafe import one_line

        self.exit(EXIT_USAGE, f"tailaudit: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, from the declared options (audit/options.py, reat_finetune/options.py)."""
    from reat_finetune import config as _repair_config  # noqa: F401  (declares the options of both configs)

    parser = _Parser(prog="tailaudit", description="Class-wise adversarial robustness audits on long-tailed data.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _groups(sub.add_parser("audit", help="audit a model: class-wise PGD / Temperature-PGD robustness"), "audit")
    _groups(sub.add_parser("repair", help="adversarially fine-tune a model (REAT, AT-BSL, PGD-AT, TRADES-BSL, "
                                          "LBGAT, MiSLAS, ResLT) and audit it before/after"), "repair")
    _groups(sub.add_parser("dataset", help="print a dataset's class names and long-tailed training counts"), "dataset")
    _groups(sub.add_parser("report", help="render HTML/PDF reports from saved results.json"), "report")
    return parser


def _audit_config(args: argparse.Namespace):
    """The audit's settings: every declared option of the command that fills an AuditConfig field."""
    from audit.config import AuditConfig
    from audit.options import config_values

    return AuditConfig(**config_values(args, "audit", args.command))


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
    from audit.checks.gate import EXIT_GATE, gate_failures
    from audit.textsafe import terminal_safe

    gate = results.gate
    if gate is None or gate.passed:
        return 0
    for line in gate_failures(gate):
        print(terminal_safe(line), file=sys.stderr)
    return EXIT_GATE


def cmd_repair(args: argparse.Namespace) -> int:
    from audit.options import config_values
    from reat_finetune import RepairConfig, RepairInterrupted, format_comparison
    from tailaudit import run_repair

    audit = _audit_config(args)
    config = RepairConfig(audit=audit, **config_values(args, "repair", "repair"), formats=tuple(_formats(args)),
                          quiet=audit.quiet)
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
    after = [ln for ln in verdict_lines(run.after)[1:]  # not the repaired file again
             if "next: Repair it" not in ln and "repair command:" not in ln]
    print(terminal_safe("\n".join(["", "audit of the model handed back:"] + after)))
    for path in run.reports.values():
        print(terminal_safe(f"report: {path}"))
    print(terminal_safe(f"repaired model: {run.model_path}"))
    print(terminal_safe(f"results: {run.before_path} (before), {run.after_path} (after)"))
    return _gate_exit(run.after)


def cmd_dataset(args: argparse.Namespace) -> int:
    from audit.data import class_groups, load_dataset

    data = load_dataset(args.name, imbalance=args.imbalance, data_root=args.data_root,
                        class_counts=args.class_counts, download=args.download)
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
    from audit.run import distributed

    return distributed.is_main()


COMMANDS = {"audit": cmd_audit, "repair": cmd_repair, "dataset": cmd_dataset, "report": cmd_report}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    from audit.run import distributed

    quiet_rank = distributed.launcher_rank() != 0  # [distributed] other ranks print nothing but errors
    level = (logging.ERROR if quiet_rank else logging.DEBUG if debug
             else logging.WARNING if getattr(args, "quiet", False) else logging.INFO)  # --quiet: warnings only
    for name in ("audit", "reports", "reat_finetune", "tailaudit"):
        logging.getLogger(name).setLevel(level)
    from audit.errors import TailAuditError, command_line
    from audit.textsafe import one_line, route_warnings, stdout_broken, stdout_gone, tolerant_stdout

    tolerant_stdout()
    route_warnings(debug)
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
