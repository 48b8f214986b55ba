"""Hostile and broken inputs: every one is refused with exit code 2, one line on stderr, no traceback,
and nothing left in the output folder. In-process through ``cli.main`` (fast); the memory-bound
cases run in a subprocess under an address-space limit (``resource.setrlimit(RLIMIT_AS)``).
"""
from __future__ import annotations

import copy
import errno
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from audit import bounds
from audit.run.outputs import MANIFEST
from support import DEMO, ROOT, run_main

FAST = ["--n-per-class", "2", "--steps", "1", "--quiet", "--no-html", "--no-pdf"]


# --------------------------------------------------------------------------- running and checking


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


def assert_refused(code: int, err: str, needle: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "\x1b" not in lines[0]
    return lines[0]


# --------------------------------------------------------------------------- hostile files


def tiny_onnx(path: Path, *, shape=(None, 1, 8, 8), weights=None, outputs_inf=False, external=None) -> Path:
    """A classifier: GlobalAveragePool -> Flatten -> MatMul (C x 10) [-> / 0]."""
    c = shape[1]
    w = np.ones((c, 10), np.float32) if weights is None else weights
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["y" if not outputs_inf else "m"])]
    inits = [numpy_helper.from_array(w, "W")]
    if outputs_inf:
        nodes.append(helper.make_node("Div", ["m", "Z"], ["y"]))
        inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "Z"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external is None:
        onnx.save(model, str(path))
        return path
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.data",
              size_threshold=0)
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = external
    (path.parent / "w.data").rename(path.parent / Path(external).name if "/" not in external
                                    else (path.parent / external).resolve())
    onnx.save(m, str(path))
    return path


def timm_checkpoint(path: Path, how: str) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = {k: v.clone().contiguous() for k, v in timm.create_model("test_resnet", num_classes=10).state_dict().items()}
    if how == "shape":
        key = next(k for k, v in sd.items() if v.ndim == 4)
        sd[key] = torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])
    elif how == "nan":
        sd = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in sd.items()}
    save_file(sd, str(path))
    return path


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height (the pixel data is a few bytes): a cheap decompression bomb."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def image_folder(d: Path, first: Callable[[Path], Path] | None = None) -> tuple[Path, Path]:
    """An eval folder of 10 classes (one 8x8 image each) plus --class-counts; ``first`` replaces class 0's image."""
    root = d / "imgs"
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        target = root / f"c{c}" / "a.png"
        if c == 0 and first is not None:
            first(target)
        else:
            Image.new("L", (8, 8), color=20 * c).save(target)
    counts = d / "counts.json"
    counts.write_text(json.dumps([100 - 9 * c for c in range(10)]))
    return root, counts


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def pickled_checkpoint(path: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"format": "tailaudit-repair-checkpoint", "x": Evil()}, path)
    return path


# --------------------------------------------------------------------------- results files


@pytest.fixture
def demo_results(tiny_audit) -> dict:
    """A real results.json from the session's tiny digits audit (a copy each test may edit)."""
    return copy.deepcopy(tiny_audit[1])


def results_file(d: Path, base: dict, edit: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
    d = d / "res"
    d.mkdir(exist_ok=True)
    path = d / "results.json"
    if text is None:
        r = json.loads(json.dumps(base))
        edit(r)
        text = json.dumps(r)
    path.write_text(text)
    return path


def npz_with_header(path: Path, shape: tuple, dtype: str = "|u1") -> Path:
    """An npz whose 'clean' array header declares ``shape`` but holds a few bytes."""
    import zipfile

    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = bytearray(b"\x93NUMPY\x01\x00")
    text = repr(header).encode("latin1")
    pad = 64 - (len(buf) + 2 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    buf += struct.pack("<H", len(text)) + text + b"\x00" * 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("clean.npy", bytes(buf))
        for k in ("adv", "label", "adv_pred"):
            with zf.open(f"{k}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.zeros(1, np.int64))
    return path


# --------------------------------------------------------------------------- the cases

D = "--dataset"
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # flags: absurd and non-finite numbers
    ("steps 1e8", lambda d: ["audit", str(DEMO), "--steps", "100000000"], "--steps"),
    ("steps 0", lambda d: ["audit", str(DEMO), "--steps", "0"], "--steps"),
    ("seed beyond 64 bits", lambda d: ["audit", str(DEMO), "--seed", str(2**64 + 1)], "--seed"),
    ("seed negative", lambda d: ["audit", str(DEMO), "--seed=-1"], "--seed"),
    ("temperature nan", lambda d: ["audit", str(DEMO), "--temperature", "nan"], "temperature"),
    ("temperature inf", lambda d: ["audit", str(DEMO), "--temperature", "0.5,inf"], "temperature"),
    ("temperature zero", lambda d: ["audit", str(DEMO), "--temperature", "0"], "temperature"),
    ("eps nan", lambda d: ["audit", str(DEMO), "--eps", "nan"], "eps"),
    ("eps inf", lambda d: ["audit", str(DEMO), "--eps", "inf/1"], "eps"),
    ("batch size 1e9", lambda d: ["audit", str(DEMO), "--batch-size", "1000000000"], "--batch-size"),
    ("imbalance nan", lambda d: ["audit", str(DEMO), "--imbalance", "nan"], "--imbalance"),
    ("step size inf", lambda d: ["audit", str(DEMO), "--step-size", "1e999"], "--step-size"),
    ("threads 0", lambda d: ["audit", str(DEMO), "--threads", "0"], "--threads"),
    ("threads 1e6", lambda d: ["audit", str(DEMO), "--threads", "1000000"], "--threads"),
    ("input size 20000", lambda d: ["audit", str(DEMO), "--input-size", "20000"], "allow-large-input"),
    ("mean nan", lambda d: ["audit", str(DEMO), "--mean", "nan", "--std", "1"], "--mean"),
    ("std zero", lambda d: ["audit", str(DEMO), "--mean", "0", "--std", "0"], "--std"),
    ("mean/std lengths differ", lambda d: ["audit", str(DEMO), "--mean", "0.5,0.5", "--std", "1"], "--std"),
    ("3-value mean on a 1-channel model", lambda d: ["audit", str(DEMO), "--mean", "0.5,0.5,0.5",
                                                    "--std", "0.5,0.5,0.5"], "1-channel"),
    ("repair epochs 0", lambda d: ["repair", str(DEMO), "--epochs", "0"], "--epochs"),
    ("repair lr inf", lambda d: ["repair", str(DEMO), "--lr", "inf"], "--lr"),
    ("repair train steps 1e9", lambda d: ["repair", str(DEMO), "--train-steps", "1000000000"], "--train-steps"),
    ("repair tail lambda nan", lambda d: ["repair", str(DEMO), "--tail-lambda", "nan"], "--tail-lambda"),
    ("repair val fraction 0.9", lambda d: ["repair", str(DEMO), "--val-fraction", "0.9"], "--val-fraction"),
    ("repair pickled --resume", lambda d: ["repair", str(DEMO), "--resume", str(pickled_checkpoint(d / "ck.pt"))],
     "never unpickles"),
    # output folders
    ("audit --out is a file", lambda d: ["audit", str(DEMO), "--out", str(_file(d / "f"))], "existing file"),
    ("audit --out under a file", lambda d: ["audit", str(DEMO), "--out", str(_file(d / "f") / "x")], "is a file"),
    ("repair --out is a file", lambda d: ["repair", str(DEMO), "--out", str(_file(d / "f"))], "existing file"),
    # models and checkpoints
    ("onnx input 20000x20000", lambda d: ["audit", str(tiny_onnx(d / "big.onnx", shape=(None, 1, 20000, 20000)))],
     "allow-large-input"),
    ("onnx external data outside its folder", lambda d: ["audit", str(_outside_onnx(d))], "outside its folder"),
    ("onnx NaN weights", lambda d: ["audit", str(tiny_onnx(d / "nan.onnx", weights=np.full((1, 10), np.nan,
                                                                                          np.float32)))], "NaN"),
    ("onnx infinite outputs", lambda d: ["audit", str(tiny_onnx(d / "inf.onnx", outputs_inf=True))], "infinite"),
    ("checkpoint tensor shape mismatch", lambda d: ["audit", "timm:test_resnet", "--checkpoint",
                                                    str(timm_checkpoint(d / "s.safetensors", "shape"))],
     "shapes differ"),
    ("checkpoint all NaN", lambda d: ["audit", "timm:test_resnet", "--checkpoint",
                                      str(timm_checkpoint(d / "n.safetensors", "nan"))], "NaN"),
    # data
    ("image above the pixel limit", lambda d: _folder_args(d, lambda p: png_with_size(p, 9000, 9000)), "limit"),
    ("decompression bomb 30000x30000", lambda d: _folder_args(d, lambda p: png_with_size(p, 30000, 30000)), "limit"),
    ("image that is not an image", lambda d: _folder_args(d, lambda p: p.write_bytes(b"\x89PNG garbage") and p),
     "cannot read image"),
    ("class counts nested 100000 deep", lambda d: ["dataset", "imagefolder", "--data-root", str(image_folder(d)[0]),
                                                   "--class-counts", str(_text(d / "deep.json", nested(100000)))],
     "nested"),
    ("class counts NaN", lambda d: ["dataset", "imagefolder", "--data-root", str(image_folder(d)[0]),
                                    "--class-counts", str(_text(d / "nan.json", "[NaN" + ",1" * 9 + "]"))], "NaN"),
    ("class counts 1e30", lambda d: ["dataset", "imagefolder", "--data-root", str(image_folder(d)[0]),
                                     "--class-counts", str(_text(d / "big.json", "[" + ",".join(["10" * 15] * 10)
                                                                 + "]"))], "whole numbers"),
    ("dataset imbalance 0", lambda d: ["dataset", "digitslt", "--imbalance", "0"], "--imbalance"),
    # --labels: nesting, size and quadratic work bounded
    ("labels JSON nested 100000 deep", lambda d: ["audit", str(DEMO), "--labels",
                                                  str(_text(d / "deep.json", "[" * 100_000 + "]" * 100_000))],
     "nested deeper"),
    ("labels 200000 names", lambda d: ["audit", str(DEMO), "--labels",
                                       str(_text(d / "many.txt", "\n".join(f"c{i}" for i in range(200_000))))],
     "200000 names"),
    ("labels /dev/zero", lambda d: ["audit", str(DEMO), "--labels", "/dev/zero"], "the limit"),
]


def _file(p: Path) -> Path:
    p.write_text("I am a file\n")
    return p


def _text(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _outside_onnx(d: Path) -> Path:
    (d / "m").mkdir()
    return tiny_onnx(d / "m" / "x.onnx", external="../w.data")


def _folder_args(d: Path, first: Callable[[Path], Path]) -> list[str]:
    root, counts = image_folder(d, first)
    return ["audit", str(DEMO), D, "imagefolder", "--data-root", str(root), "--class-counts", str(counts)]


def _results_cases() -> list[tuple[str, Callable[[dict], None] | str, str]]:
    def setter(path: str, value):
        def edit(r: dict) -> None:
            node = r
            keys = path.split(".")
            for k in keys[:-1]:
                node = node[int(k)] if isinstance(node, list) else node[k]
            node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
        return edit

    return [
        ("attacks as strings", setter("attacks", ["pgd", "temp-pgd"]), "$.attacks[0]"),
        ("robust_acc null", setter("per_class.0.robust_acc", None), "$.per_class[0].robust_acc"),
        ("classes a string", setter("dataset.classes", "0123456789"), "$.dataset.classes"),
        ("huge n_eval", setter("dataset.n_eval", 10**30), "$.dataset.n_eval"),
        ("accuracy above 1", setter("per_class.3.clean_acc", 7.5), "$.per_class[3].clean_acc"),
        ("worst class out of range", setter("summary.robust.worst_case.worst_class", 999), "worst_class"),
        ("NaN accuracy", "nan", "NaN"),
        ("nested 50000 deep", "deep", "nested"),
    ]


RESULTS_CASES = _results_cases()


@pytest.mark.parametrize("name,args,needle", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_refused(tmp_path, monkeypatch, capsys, name, args, needle):
    monkeypatch.chdir(tmp_path)
    argv = args(tmp_path)
    if argv[0] in ("audit", "repair") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if argv[0] in ("audit", "repair"):
        argv += FAST + (["--epochs", "1"] if argv[0] == "repair" and "--epochs" not in argv else [])
    before = snapshot(tmp_path)
    code, out, err = run_main(argv, capsys)
    assert_refused(code, err, needle)
    assert snapshot(tmp_path) == before, "files were left behind"


@pytest.mark.parametrize("name,edit,needle", RESULTS_CASES, ids=[c[0] for c in RESULTS_CASES])
def test_hostile_results_refused_naming_the_field(tmp_path, capsys, demo_results, name, edit, needle):
    if edit == "nan":
        text = json.dumps(demo_results).replace('"clean_acc": 1.0', '"clean_acc": NaN', 1)
        assert "NaN" in text
        path = results_file(tmp_path, demo_results, text=text)
    elif edit == "deep":
        path = results_file(tmp_path, demo_results, text='{"schema_version": 1, "x": ' + nested(50000) + "}")
    else:
        path = results_file(tmp_path, demo_results, edit)
    before = snapshot(tmp_path)
    code, _, err = run_main(["report", str(path), "--out", str(tmp_path / "rep")], capsys)
    assert_refused(code, err, needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("shape,dtype,needle", [((100000, 3, 4096, 4096), "|u1", "limit"),
                                                ((2, 3), "|O", "objects"),
                                                ((64, 3, 32, 32), "|u1", "beyond the file")],
                         ids=["examples.npz 5 TB", "examples.npz objects", "examples.npz truncated"])
def test_examples_npz_checked_from_headers(tmp_path, capsys, demo_results, shape, dtype, needle):
    path = results_file(tmp_path, demo_results, lambda r: r["files"].__setitem__("examples", "examples.npz"))
    npz_with_header(path.parent / "examples.npz", shape, dtype)
    code, _, err = run_main(["report", str(path), "--out", str(tmp_path / "rep"), "--format", "html"], capsys)
    assert_refused(code, err, needle)
    assert not (tmp_path / "rep").exists()


def test_report_out_under_a_file(tmp_path, capsys, demo_results):
    path = results_file(tmp_path, demo_results, lambda r: None)
    code, _, err = run_main(["report", str(path), "--out", str(_file(tmp_path / "f") / "x")], capsys)
    assert_refused(code, err, "is a file")


# --------------------------------------------------------------------------- schema on tailaudit's own output


def test_own_results_validate_against_the_schema(demo_results):
    import jsonschema

    schema = json.loads((ROOT / "audit" / "contract" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(demo_results, schema, cls=jsonschema.Draft202012Validator)
    # additions by newer writers (verdict, gate, sections' new keys) still validate
    extended = dict(demo_results, verdict={"code": "robust", "headline": "h", "reasons": [], "actions": [], "later": 1},
                    gate={"conditions": [], "passed": True, "later": 1})
    extended["environment"] = dict(extended["environment"], world_size=2)
    extended["summary"] = dict(extended["summary"], curve=[{"eps": 0.1, "robust": 0.4}])
    jsonschema.validate(extended, schema, cls=jsonschema.Draft202012Validator)
    assert set(json.loads(json.dumps(schema))["required"]) <= set(demo_results)
    with pytest.raises(jsonschema.ValidationError):  # the verdict's own keys are typed (audit/checks/verdict.py)
        jsonschema.validate(dict(demo_results, verdict={"code": "excellent", "headline": "h", "reasons": [],
                                                        "actions": []}), schema, cls=jsonschema.Draft202012Validator)


def test_results_checked_against_the_schema_before_they_are_written(tmp_path, monkeypatch, capsys):
    """A results dict the schema refuses (a tailaudit bug) is never written: one line, exit 2, no folder."""
    import dataclasses

    import audit.pipeline
    from audit.contract.model import Verdict
    from audit.checks.verdict import compute_verdict

    class Broken(Verdict):  # a verdict whose JSON the schema refuses
        def to_json(self):
            return {**super().to_json(), "code": "excellent"}

    monkeypatch.setattr(audit.pipeline, "compute_verdict",
                        lambda r: Broken(**dataclasses.asdict(compute_verdict(r))))
    out = tmp_path / "run"
    code, _, err = run_main(["audit", str(DEMO), "--out", str(out), "--no-html", "--no-pdf", *FAST], capsys)
    assert code == 2 and "$.verdict.code is invalid" in err and "tailaudit bug" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_repair_before_after_results_validate(tmp_path, capsys):
    import jsonschema

    from audit.contract.schema import load_results

    out = tmp_path / "rep"
    code, _, err = run_main(["repair", str(DEMO), "--epochs", "1", "--train-steps", "1", "--batch-size-train", "64",
                             "--out", str(out), *FAST], capsys)
    assert code == 0, err
    schema = json.loads((ROOT / "audit" / "contract" / "results.schema.json").read_text())
    for side in ("before", "after"):
        res = json.loads((out / side / "results.json").read_text())
        jsonschema.validate(res, schema, cls=jsonschema.Draft202012Validator)
        load_results(out / side / "results.json")  # the report's own check (schema + cross-field)
        assert MANIFEST in {p.name for p in (out / side).iterdir()}
    top = json.loads((out / MANIFEST).read_text())["files"]
    assert {"training_log.json", "repair.json", "checkpoint.pt"} <= set(top)
    assert any(n.startswith("repaired.") for n in top)


def test_schema_doc_in_step_with_markdown():
    """Every top-level key the schema names is documented in docs/results_schema.md."""
    schema = json.loads((ROOT / "audit" / "contract" / "results.schema.json").read_text())
    doc = (ROOT / "docs" / "results_schema.md").read_text()
    missing = [k for k in schema["properties"] if f'"{k}"' not in doc]
    assert not missing, missing


# --------------------------------------------------------------------------- output folder behaviour


def test_rerun_removes_only_files_tailaudit_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["audit", str(DEMO), "--out", str(out), "--n-per-class", "2", "--steps", "1", "--quiet"]
    assert run_main(argv + ["--no-pdf"], capsys)[0] == 0
    (out / "report.pdf").write_bytes(b"%PDF- not ours")  # same name, but the manifest says we did not write it
    (out / "notes.txt").write_text("mine")
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert "report.html" in manifest and "report.pdf" not in manifest
    assert run_main(argv + ["--no-pdf", "--no-html"], capsys)[0] == 0
    assert not (out / "report.html").exists(), "stale report of the earlier run left behind"
    assert (out / "report.pdf").read_bytes() == b"%PDF- not ours" and (out / "notes.txt").read_text() == "mine"
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == ["examples.npz", "per_class.csv",
                                                                          "points.json", "results.json", "summary.md"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tailaudit-staging")]


def test_renderer_failure_keeps_the_results(tmp_path, monkeypatch, capsys):
    """A broken report renderer must not throw away the audit: results are committed, no report, exit 0."""
    import reports

    def broken(*a, **k):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(reports, "render_report", broken)
    out = tmp_path / "run"
    code, stdout, err = run_main(["audit", str(DEMO), "--out", str(out), "--n-per-class", "2", "--steps", "1",
                                  "--quiet"], capsys)
    assert code == 0, err
    assert (out / "results.json").is_file() and not list(out.glob("report.*"))
    assert "report:" not in stdout


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=["ENOSPC", "EROFS", "EACCES"])
def test_write_failure_keeps_previous_run_and_leaves_nothing(tmp_path, monkeypatch, capsys, err_no):
    """A full disk, read-only filesystem or permission error while writing results: one line, exit 2, the
    earlier run's files untouched and nothing of the failed run left. Simulated by making os.replace fail
    for files moved into the output folder (root ignores chmod, and tests must not fill a disk)."""
    out = tmp_path / "run"
    argv = ["audit", str(DEMO), "--out", str(out), *FAST]
    assert run_main(argv, capsys)[0] == 0
    before = snapshot(out)
    real_replace = os.replace

    def failing(src, dst, *a, **k):
        if Path(dst).name == "results.json":
            raise OSError(err_no, os.strerror(err_no), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    code, _, err = run_main(argv + ["--seed", "1"], capsys)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_refused(code, err, "cannot write")
    assert snapshot(out) == before


def test_report_write_failure_one_line_nothing_left(tmp_path, monkeypatch, capsys, demo_results):
    path = results_file(tmp_path, demo_results, lambda r: None)
    real_replace = os.replace

    def failing(src, dst, *a, **k):
        if Path(dst).name.startswith("report."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    code, _, err = run_main(["report", str(path), "--out", str(tmp_path / "rep"), "--format", "html"], capsys)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_refused(code, err, "no space left")
    assert not (tmp_path / "rep").exists()


def test_read_only_out_folder_refused_before_loading(tmp_path, monkeypatch, capsys):
    """chmod where it binds (non-root); as root, chmod is ignored, so the probe write is made to fail instead."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
    else:
        import audit.contract.files as outputs

        def refuse(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
    loaded = []
    monkeypatch.setattr("audit.pipeline.prepare", lambda *a, **k: loaded.append(1))
    code, _, err = run_main(["audit", str(DEMO), "--out", str(ro / "x"), *FAST], capsys)
    ro.chmod(0o700)
    assert_refused(code, err, "--out")
    assert not loaded, "the model and data were loaded before the output folder was checked"
    assert list(ro.iterdir()) == []


# --------------------------------------------------------------------------- terminal safety, threads


def test_class_names_with_escape_sequences_do_not_reach_the_terminal(tmp_path, capsys):
    root = tmp_path / "imgs"
    for c in range(10):
        name = f"c{c}\x1b]0;pwned\x07\x1b[31m" if c == 3 else f"c{c}"
        (root / name).mkdir(parents=True)
        Image.new("L", (8, 8), color=20 * c).save(root / name / "a.png")
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps([100 - 9 * c for c in range(10)]))
    code, out, err = run_main(["audit", str(DEMO), D, "imagefolder", "--data-root", str(root), "--class-counts",
                               str(counts), "--out", str(tmp_path / "o"), "--force", *FAST], capsys)
    assert code == 0, err  # (--force: flat grey images are not digits, the clean check would stop the audit)
    assert "\x1b" not in out and "\x07" not in out and "\x1b" not in err
    assert "c3?]0;pwned?" in out


def test_threads_recorded_in_results(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code, _, err = run_main(["audit", str(DEMO), "--out", str(tmp_path / "o"), "--threads", "1", *FAST], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["threads"] == 1 and res["environment"]["torch_threads"] == 1


def test_library_log_noise_once(caplog):
    """WeasyPrint logs one line per missing glyph and per page: folded into one line, repeats dropped."""
    from audit.textsafe import route_warnings

    route_warnings(debug=False)
    lib = logging.getLogger("weasyprint")
    with caplog.at_level(logging.WARNING):
        for ch in "猫犬猫鳥":
            lib.warning('.notdef glyph rendered for Unicode string unsupported by fonts: "%s"', ch)
        lib.warning("Ignored `gap` at 1:2, unknown property.")
        lib.warning("Ignored `gap` at 1:2, unknown property.")
    messages = [r.getMessage() for r in caplog.records if r.name == "weasyprint"]
    assert len(messages) == 2, messages
    assert "no glyph" in messages[0] and "猫" in messages[0]


def test_bounds_helper_for_new_flags():
    parse = bounds.bounded_int("--queries", 1, bounds.MAX_QUERIES)
    assert parse("5000") == 5000
    import argparse

    for bad in ("0", str(bounds.MAX_QUERIES + 1), "1e3", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    f = bounds.bounded_float("--eps", 0, 1, lo_open=True)
    assert f("8/255") == pytest.approx(8 / 255)
    for bad in ("nan", "inf", "0", "2"):
        with pytest.raises(argparse.ArgumentTypeError):
            f(bad)


# --------------------------------------------------------------------------- memory bounds


MEMORY_LIMIT = 5 * 2**30  # a normal tiny audit peaks near 4 GiB of address space (torch, onnxruntime mapped)

_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import cli
    cases = json.loads(sys.argv[1])
    codes = []
    for argv in cases:
        try:
            codes.append(cli.main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
        except MemoryError:
            codes.append("MemoryError")
    print(json.dumps(codes))
""")


@pytest.mark.slow
def test_memory_bounded_under_address_space_limit(tmp_path, demo_results):
    """Tiny files that used to allocate many GiB, run under RLIMIT_AS = 5 GiB."""
    big_first, counts = image_folder(tmp_path / "a", lambda p: Image.new("L", (7000, 7000)).save(p) or p)
    bomb, bomb_counts = image_folder(tmp_path / "b", lambda p: png_with_size(p, 30000, 30000))
    big_onnx = tiny_onnx(tmp_path / "big.onnx", shape=(None, 3, 20000, 20000))
    res = results_file(tmp_path, demo_results, lambda r: r["files"].__setitem__("examples", "examples.npz"))
    npz_with_header(res.parent / "examples.npz", (100000, 3, 4096, 4096))
    fast = ["--n-per-class", "1", "--steps", "1", "--quiet", "--no-html", "--no-pdf", "--device", "cpu"]
    cases = [
        # the first image is 7000x7000: every image used to be resized to it (10 x 590 MB floats)
        ["audit", str(DEMO), D, "imagefolder", "--data-root", str(big_first), "--class-counts", str(counts),
         "--out", str(tmp_path / "o1"), "--force", *fast],  # blank images: --force past the clean check
        ["audit", str(DEMO), D, "imagefolder", "--data-root", str(bomb), "--class-counts", str(bomb_counts),
         "--out", str(tmp_path / "o2"), *fast],
        ["audit", str(big_onnx), "--out", str(tmp_path / "o3"), *fast],
        ["report", str(res), "--out", str(tmp_path / "o4"), "--format", "html"],
    ]
    # CPU only: a CUDA context alone reserves more address space than the limit
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(limit=MEMORY_LIMIT), json.dumps(cases)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [0, 2, 2, 2], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    res1 = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert res1["model"]["preprocessing"]["input_size"] == [1, 8, 8]
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()


def test_staging_left_by_a_killed_run_is_swept_by_the_next_one(tmp_path):
    """SIGKILL leaves the staging folder behind; the next run into the folder removes it, and only it."""
    import subprocess
    import sys

    from audit.run.outputs import RunFiles, _staging_prefix

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = out / f"{_staging_prefix(dead.pid)}abc"
    left.mkdir()
    (left / "results.json").write_text("{}")
    live = out / f"{_staging_prefix()}xyz"  # this process: alive, maybe still writing
    other_host = out / ".tailaudit-staging-elsewhere.1.q"  # another host's process: cannot tell, keep it
    live.mkdir()
    other_host.mkdir()
    with RunFiles(out) as files:
        files.add_json("results.json", {"ok": True})
        files.commit()
    assert not left.exists() and live.exists() and other_host.exists()
    assert json.loads((out / "results.json").read_text()) == {"ok": True}


def test_truncated_image_refused_even_after_the_renderer_is_imported(tmp_path, monkeypatch):
    """Some WeasyPrint releases set PIL's process-wide LOAD_TRUNCATED_IMAGES on import (70.0 no longer does);
    whoever sets it, our decoder must not inherit it."""
    import reports  # noqa: F401  (older WeasyPrint flipped the flag here)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as such a library leaves it

    from audit.data.core import ImageFileDataset
    from audit.errors import DatasetError

    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # the premise: the renderer's import changed the global
    with pytest.raises(DatasetError, match="cannot read image .*cut.png"):
        ImageFileDataset([path], [0])[0]
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # restored for whoever set it


@pytest.mark.parametrize("shape", ["one 5000-character name", "30 names of 200 characters"])
@pytest.mark.parametrize("command", ["audit", "repair"])
def test_out_path_too_long_is_one_line(tmp_path, capsys, shape, command):
    long = tmp_path / ("a" * 5000) if shape.startswith("one") else tmp_path.joinpath(*["b" * 200] * 30)
    extra = ["--train-steps-total", "1"] if command == "repair" else []
    code, out, err = run_main([command, str(DEMO), "--out", str(long), *FAST, *extra], capsys)
    assert code == 2 and "is too long for the file system" in err and "choose a shorter path" in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400  # the path is shortened, not echoed whole
    assert list(tmp_path.iterdir()) == []


def test_an_infinite_figure_is_written_as_null_and_named(demo_results, tmp_path):
    """Any figure that overflowed becomes null with its JSON path in a warning; NaN (no figure) stays silent."""
    from audit.contract.files import null_infinities, write_json
    from audit.contract.schema import check_written

    res = demo_results
    res["per_class"][3]["weight_norm"] = float("inf")
    res["summary"]["robust"]["worst_case"]["std"] = float("-inf")
    res["per_class"][4]["weight_norm"] = float("nan")
    assert null_infinities(res) == ["$.per_class[3].weight_norm", "$.summary.robust.worst_case.std"]
    assert res["per_class"][3]["weight_norm"] is None
    write_json(tmp_path / "r.json", res, check=check_written)  # writes (NaN as null) and validates
    assert json.loads((tmp_path / "r.json").read_text())["per_class"][4]["weight_norm"] is None
