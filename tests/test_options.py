"""Each option is declared once (audit/options.py, reat_finetune/options.py): the command line and the Python API
accept and refuse exactly the same values, configs hold typed values, and docs/options.md is generated.

Every case runs the real parser of ``cli.py`` and the real ``validate`` of the configs; no audit runs.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any

import pytest
from support import ROOT

import cli
from audit.checks import gate
from audit.config import AuditConfig
from audit.errors import TailAuditError
from audit.options import OPTIONS, Option, config_values
from reat_finetune.config import RepairConfig
from reat_finetune.methods import LBGAT, LBGATParams, MethodParams, get_method

MODEL = "model.onnx"  # a name: validate() does not open it
NEEDS = {"--input-size": ["--allow-large-input"]}  # a large input is refused without it, by both sides alike


def _command(opt: Option) -> str:
    return "repair" if opt.config == "repair" else "audit"


def _text(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _cases() -> list[tuple[Option, Any, bool]]:
    """(option, value, accepted) for every declared option that fills a config field."""
    cases: list[tuple[Option, Any, bool]] = []
    for opt in OPTIONS:
        if opt.config is None or opt.positional:
            continue
        lo, hi = opt.limits()
        if opt.kind == "int":
            cases += [(opt, lo, True), (opt, lo - 1, False), (opt, hi, True), (opt, hi + 1, False)]
        elif opt.kind in ("float", "floats", "eps"):
            cases += [(opt, float(lo), not opt.lo_open), (opt, math.nextafter(lo, -math.inf), False),
                      (opt, float(hi), not opt.hi_open), (opt, math.nextafter(hi, math.inf), False)]
            if opt.lo_open:
                cases.append((opt, math.nextafter(lo, math.inf), True))
            if opt.hi_open:
                cases.append((opt, math.nextafter(hi, -math.inf), True))
        elif opt.kind == "choice":
            cases += [(opt, c, True) for c in opt.choice_list()] + [(opt, "no-such-choice", False)]
        else:  # text, names, switch: what the command line gives lands in the field unchanged
            cases.append((opt, None, True))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


def _cli(parser, opt: Option, value: Any, capsys) -> Any:
    """The config the command line builds, validated; SystemExit(2) or a TailAuditError when refused."""
    argv = [_command(opt), MODEL, *NEEDS.get(opt.flag, [])]
    if opt.kind == "switch":
        argv.append(opt.flag)
    elif opt.kind in ("text", "names"):
        argv += [opt.flag, "x.y"]
    else:
        argv += [opt.flag, _text(value)]
    args = parser.parse_args(argv)
    audit = AuditConfig(**config_values(args, "audit", args.command))
    config = audit if opt.config == "audit" else RepairConfig(audit=audit, **config_values(args, "repair", "repair"))
    if opt.kind in ("switch", "text", "names"):
        return config
    config.validate()
    return config


def _api(opt: Option, value: Any) -> Any:
    extra = {"allow_large_input": True} if opt.flag in NEEDS else {}
    if opt.config == "audit":
        config = AuditConfig(model=MODEL, **extra, **{opt.name: (value,) if opt.kind == "floats" else value})
    else:
        config = RepairConfig(audit=AuditConfig(model=MODEL), **{opt.name: value})
    config.validate()
    return config


@pytest.mark.parametrize("opt,value,accepted", CASES,
                         ids=[f"{o.flag}={v!r}:{'ok' if a else 'no'}" for o, v, a in CASES])
def test_cli_and_api_accept_and_refuse_the_same_values(parser, capsys, opt: Option, value: Any, accepted: bool):
    if opt.kind in ("switch", "text", "names"):
        config = _cli(parser, opt, value, capsys)
        want = opt.const if opt.kind == "switch" else ("x.y",) if opt.kind == "names" else "x.y"
        assert getattr(config, opt.name) == want
        return
    if accepted:
        got_cli, got_api = getattr(_cli(parser, opt, value, capsys), opt.name), getattr(_api(opt, value), opt.name)
        assert got_cli == got_api, (got_cli, got_api)  # the same typed value in the config, from both sides
        return
    with pytest.raises((SystemExit, TailAuditError)) as cli_refusal:
        _cli(parser, opt, value, capsys)
    if cli_refusal.type is SystemExit:
        assert cli_refusal.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and opt.flag in err, err  # one line naming the flag
    with pytest.raises(TailAuditError, match=opt.flag):
        _api(opt, value)


def test_every_parser_option_is_declared(parser):
    """The parser has no option the table does not declare (only the hidden --debug and argparse's --help)."""
    import argparse

    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    assert found - {o.flag for o in OPTIONS} == {"--debug", "--help"}
    commands_own = {"--debug", "--help", "--no-html", "--no-pdf", "--json", "--compare", "--format"}
    assert {o.flag for o, _, _ in CASES} == found - commands_own  # every option that fills a config has cases


def test_the_bounds_that_used_to_disagree_agree(parser):
    """--epochs stopped at 10 000 on the command line and 100 000 in the API; --train-steps-total 10 M vs 100 M."""
    for name, over in (("epochs", 10_001), ("steps_total", 10_000_001)):
        with pytest.raises(TailAuditError):
            RepairConfig(audit=AuditConfig(model=MODEL), **{name: over}).validate()


def test_eps_curve_holds_floats_from_python_and_the_command_line(parser):
    config = AuditConfig(model=MODEL, eps_curve=(1 / 255, 2 / 255))
    config.validate()
    assert config.eps_curve == (1 / 255, 2 / 255)
    assert config.to_dict()["eps_curve"] == ["1/255", "2/255"]  # results.json echoes the text, as before
    texts = AuditConfig(model=MODEL, eps_curve=("2/255", "1/255"))
    texts.validate()
    assert texts.eps_curve == (1 / 255, 2 / 255)
    args = parser.parse_args(["audit", MODEL, "--eps", "4/255,1/255"])
    cli_config = cli._audit_config(args)
    assert cli_config.eps == 4 / 255 and cli_config.eps_curve == (1 / 255, 4 / 255)
    with pytest.raises(TailAuditError, match="twice"):
        AuditConfig(model=MODEL, eps_curve=(1 / 255, 1 / 255)).validate()


def test_fail_under_is_parsed_once(monkeypatch):
    calls = []
    real = gate.parse_fail_under

    def counting(text: str):
        calls.append(text)
        return real(text)

    monkeypatch.setattr("audit.config.parse_fail_under", counting)
    config = AuditConfig(model=MODEL, fail_under="robust=0.4,tail=25%")
    config.validate()
    assert [c.key for c in config.gate_conditions()] == ["robust", "tail"]
    assert calls == ["robust=0.4,tail=25%"]


def test_a_method_gets_frozen_params_from_the_config_before_any_hook():
    config = RepairConfig(audit=AuditConfig(model=MODEL), method="lbgat", guide="learnable", lbgat_beta=2.0)
    config.validate()
    method = get_method("lbgat", config)
    assert isinstance(method, LBGAT)
    assert method.params == LBGATParams(eps_schedule="warmup", eps_per_class=False, guide="learnable", beta=2.0)
    assert method.learnable and method.beta == 2.0  # no configure() yet
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.params.beta = 3.0  # type: ignore[misc]
    assert get_method("reat", config).params == MethodParams(eps_schedule="warmup", eps_per_class=False)
    source = (ROOT / "reat_finetune" / "methods.py").read_text(encoding="utf-8")
    assert "getattr(getattr(" not in source and "self.config" not in source  # the hooks read self.params


def test_docs_options_md_is_generated_from_the_declarations():
    spec = importlib.util.spec_from_file_location("options_doc", ROOT / "scripts" / "options_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "options.md").read_text(encoding="utf-8") == module.render(), \
        "docs/options.md is stale: run python scripts/options_doc.py"
