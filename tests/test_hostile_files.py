"""Hostile files, second pass (issue 19): every file tailaudit reads back, memory bounded before the checks,
ONNX names and onnxruntime's own log lines kept off the terminal, unusual but legitimate class folder names.

Each refusal is one line on stderr naming the file (and the field or array), exit code 2, no traceback and
nothing written. Files are small and synthetic: a "bomb" declares gigabytes, it never holds them.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from support import DEMO, OLDER_RESULTS, ROOT, run_main
from test_hostile_inputs import assert_refused, nested, snapshot, tiny_onnx

REPAIR = OLDER_RESULTS / "repair-2026-12-04-e4e5882"  # a real repair folder: before/, after/, both side files
CONTROL = [chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
                            *range(0x2066, 0x206A)]]


def assert_no_control(text: str) -> None:
    bad = sorted({f"U+{ord(c):04X}" for c in text if c in CONTROL})
    assert not bad, bad


# --------------------------------------------------------------------------- 1. files read back by `report`


def repair_folder(tmp_path: Path, name: str, edit: Callable[[dict], object] | str | None) -> Path:
    """A copy of the stored repair folder with one side file edited (a dict edit, or its whole text)."""
    folder = tmp_path / "rep"
    shutil.copytree(REPAIR, folder)
    if isinstance(edit, str):
        (folder / name).write_text(edit)
    elif edit is not None:
        data = json.loads((folder / name).read_text())
        data = edit(data) or data
        (folder / name).write_text(json.dumps(data))
    return folder


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[int(keys[-1]) if isinstance(d, list) else keys[-1]] = value
    return edit


SIDE_CASES = [
    ("training_log nested 100000 deep", "training_log.json", nested(100_000), "nested deeper"),
    ("training_log epoch a string", "training_log.json", _set("epochs.1", "x"), "$.epochs[1] is invalid"),
    ("training_log epoch number a string", "training_log.json", _set("epochs.1.epoch", "one"), "$.epochs[1].epoch"),
    ("training_log epochs a string", "training_log.json", _set("epochs", "abc"), "$.epochs is invalid"),
    ("training_log warnings a number", "training_log.json", _set("warnings", 5), "$.warnings"),
    ("repair config a string", "repair.json", _set("config", "abc"), "$.config is invalid"),
    ("repair budget of wrong types", "repair.json", _set("budget", {"steps_total": "many", "steps_per_epoch": 2.5}),
     "$.budget.steps_"),
    ("repair validation counts strings", "repair.json", _set("selection.validation.per_class_counts", ["a"]),
     "$.selection.validation.per_class_counts[0]"),
    ("repair environment a string", "repair.json", _set("environment", "gpu"), "$.environment"),
    ("repair not an object", "repair.json", "[1, 2]", "$ is invalid"),
    ("repair not JSON", "repair.json", "{'method': 'reat'}", "not valid JSON"),
]


@pytest.mark.parametrize("name,file,edit,needle", SIDE_CASES, ids=[c[0] for c in SIDE_CASES])
def test_repair_side_files_checked_naming_file_and_field(tmp_path, capsys, name, file, edit, needle):
    folder = repair_folder(tmp_path, file, edit)
    before = snapshot(tmp_path)
    code, _, err = run_main(["report", str(folder / "before" / "results.json"), "--compare",
                             str(folder / "after" / "results.json"), "--out", str(tmp_path / "out"),
                             "--format", "html"], capsys)
    line = assert_refused(code, err, needle)
    assert file in line and "remove the file" in line, line
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_repair_side_file_that_is_a_device_or_pipe_is_not_read(tmp_path, capsys, target):
    folder = repair_folder(tmp_path, "training_log.json", None)
    (folder / "training_log.json").unlink()
    if target == "fifo":
        os.mkfifo(folder / "training_log.json")
    else:
        os.symlink(target, folder / "training_log.json")
    code, _, err = run_main(["report", str(folder / "before" / "results.json"), "--compare",
                             str(folder / "after" / "results.json"), "--out", str(tmp_path / "out")], capsys)
    assert "training_log.json" in assert_refused(code, err, "not a regular file")


def test_stored_repair_files_match_their_schema():
    """The side files of a real (older) repair folder and of the current writer's shape validate."""
    from audit.contract.schema import load_repair_file

    from audit.contract.repair import RepairDocument, TrainingLog

    for name, model in (("repair.json", RepairDocument), ("training_log.json", TrainingLog)):
        assert isinstance(load_repair_file(REPAIR / name), model)
    assert load_repair_file(REPAIR / "before" / "repair.json") is None  # absent: no training section, no error


@pytest.fixture
def audit_copy(tiny_audit, tmp_path) -> Path:
    """A copy of the session's tiny audit folder (results.json with examples.npz beside it)."""
    folder = tmp_path / "run"
    shutil.copytree(tiny_audit[0], folder)
    assert (folder / "examples.npz").is_file()
    return folder


def _rewrite_npz(folder: Path, **over) -> None:
    with np.load(folder / "examples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in over.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez_compressed(folder / "examples.npz", **arrays)


def _npz_bomb(folder: Path) -> None:
    """The real arrays plus an entry of 300 MiB of zeros that deflate to about 0.3 MB."""
    with np.load(folder / "examples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    with zipfile.ZipFile(folder / "examples.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in arrays.items():
            with zf.open(f"{k}.npy", "w") as fh:
                np.lib.format.write_array(fh, v)
        with zf.open("pad.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.zeros(1, np.uint8))
            chunk = bytes(2**20)
            for _ in range(300):
                fh.write(chunk)
    assert (folder / "examples.npz").stat().st_size < 5 * 2**20


def _n(folder: Path) -> int:
    with np.load(folder / "examples.npz") as z:
        return len(z["label"])


NPZ_CASES = [
    ("zero-size images", lambda f: _rewrite_npz(f, clean=np.zeros((_n(f), 1, 0, 0), np.uint8),
                                                adv=np.zeros((_n(f), 1, 0, 0), np.uint8)), "'clean' has shape"),
    ("images without a channel axis", lambda f: _rewrite_npz(f, clean=np.zeros((_n(f), 8, 8), np.uint8),
                                                             adv=np.zeros((_n(f), 8, 8), np.uint8)), "'clean'"),
    ("adv of another shape", lambda f: _rewrite_npz(f, adv=np.zeros((_n(f), 1, 4, 4), np.uint8)), "'adv'"),
    ("labels as text", lambda f: _rewrite_npz(f, label=np.array(["a"] * _n(f))), "'label' is <U1"),
    ("predictions as NaN floats", lambda f: _rewrite_npz(f, adv_pred=np.full(_n(f), np.nan)), "'adv_pred' is float"),
    ("labels 2-D", lambda f: _rewrite_npz(f, label=np.zeros((_n(f), 2), np.int64)), "'label' has shape"),
    ("adv missing", lambda f: _rewrite_npz(f, adv=None), "'adv' is missing"),
    ("images float32", lambda f: _rewrite_npz(f, clean=np.zeros((_n(f), 1, 8, 8), np.float32)), "expected uint8"),
    ("not a zip", lambda f: (f / "examples.npz").write_bytes(b"PK\x03\x04 not really"), "cannot read example"),
    ("zip bomb", _npz_bomb, "unpack to"),
]


@pytest.mark.parametrize("name,edit,needle", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_examples_npz_checked_naming_the_array(audit_copy, tmp_path, capsys, name, edit, needle):
    edit(audit_copy)
    code, _, err = run_main(["report", str(audit_copy / "results.json"), "--out", str(tmp_path / "out"),
                             "--format", "html"], capsys)
    line = assert_refused(code, err, needle)
    assert "examples.npz" in line and "remove it" in line, line
    assert not (tmp_path / "out").exists()


SANITY_CASES = [
    ("sanity a string", _set("sanity", "abc"), "$.sanity is invalid"),
    ("zero_gradient a string", _set("sanity.zero_gradient", "abc"), "$.sanity.zero_gradient is invalid"),
    ("flagged classes a number", _set("sanity.zero_gradient.flagged_classes", 5),
     "$.sanity.zero_gradient.flagged_classes"),
    ("square points a string", _set("sanity.square_only.points", "x"), "$.sanity.square_only.points"),
    ("randomised points a list", _set("sanity.randomised.points", [1]), "$.sanity.randomised.points"),
    ("large eps accuracy a string", _set("sanity.large_eps", {"eps": 0.5, "robust_acc": "x", "passed": True}),
     "$.sanity.large_eps.robust_acc"),
]


@pytest.mark.parametrize("name,edit,needle", SANITY_CASES, ids=[c[0] for c in SANITY_CASES])
def test_results_sanity_section_is_covered_by_the_schema(audit_copy, tmp_path, capsys, name, edit, needle):
    path = audit_copy / "results.json"
    results = json.loads(path.read_text())
    assert isinstance(results["sanity"], dict)  # the premise: every audit writes the section
    edit(results)
    path.write_text(json.dumps(results))
    code, _, err = run_main(["report", str(path), "--out", str(tmp_path / "out")], capsys)
    assert "results.json" in assert_refused(code, err, needle)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 2. memory before the checks


def pt_bomb(path: Path, mib: int = 100) -> Path:
    """A torch.save archive whose one tensor declares ``mib`` MiB of zeros, zip-deflated to a few hundred KB."""
    import io

    k, n = 123_457, mib * 2**20 // 4
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(k)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):  # numel and size: BININT k -> n
                assert data.count(b"J" + struct.pack("<i", k)) == 2
                zf.writestr(info.filename, data.replace(b"J" + struct.pack("<i", k), b"J" + struct.pack("<i", n)))
            elif info.filename.endswith("/data/0"):
                with zf.open(info.filename, "w", force_zip64=True) as fh:
                    for _ in range(mib):
                        fh.write(bytes(2**20))
            else:
                zf.writestr(info.filename, data)
    assert path.stat().st_size < 2**20
    return path


def test_compressed_checkpoint_refused_from_its_declared_sizes(tmp_path, capsys, monkeypatch):
    """torch.load would unpack the 100 MiB entry (it inflates deflated entries): refused from the zip directory,
    before torch.load is called at all."""
    bomb = pt_bomb(tmp_path / "bomb.pt")
    with zipfile.ZipFile(bomb) as zf:
        assert sum(i.file_size for i in zf.infolist()) > 100 * 2**20
    called = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: called.append(a) or {})
    code, _, err = run_main(["audit", "timm:test_resnet", "--checkpoint", str(bomb), "--out", str(tmp_path / "o"),
                             "--n-per-class", "1", "--quiet"], capsys)
    line = assert_refused(code, err, "unpack to")
    assert "bomb.pt" in line and not called and not (tmp_path / "o").exists()


def _cifar_bomb(root: Path, data: bytes) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        (d / name).write_bytes(data)
    return root


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


PICKLE_BOMBS = {
    # a bytes object / a string / a frame of 5 GiB declared in a 14-byte file: allocated before reading
    "bytes8 of 5 GiB": b"\x80\x04\x8e" + struct.pack("<Q", 5 * 2**30) + b"xx.",
    "unicode8 of 5 GiB": b"\x80\x04\x8d" + struct.pack("<Q", 5 * 2**30) + b"xx.",
    "frame of 5 GiB": b"\x80\x04\x95" + struct.pack("<Q", 5 * 2**30) + b"}.",
    # allowed callables asked for a lot: bytearray(10**10), an empty array of 65536 x 65536
    "bytearray(1e10)": b"\x80\x02" + _global("builtins", "bytearray") + _long(10**10) + b"\x85R.",
    "array 65536 x 65536": (b"\x80\x02" + _global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
                            + b"J\x00\x00\x01\x00J\x00\x00\x01\x00\x86" + b"C\x01b" + b"\x87R."),
    # _codecs.encode(..., 'hex') doubles a string per call: 40 calls from one byte
    "hex doubling chain": (b"\x80\x02" + _global("_codecs", "encode") * 41 + _str("a") + _str("latin1") + b"\x86R"
                           + (_str("hex") + b"\x86R") * 40 + b"."),
    # one 1 MiB list copied 100 times by list(): 100 x 128 MiB of pointers and ints from a 1 MiB file
    "list() copies": (b"\x80\x04" + b"B" + struct.pack("<I", 2**20) + bytes(2**20) + b"\x94"
                      + b"(" + (_global("builtins", "list") + b"h\x00\x85R") * 100 + b"l."),
}

_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, logging, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import cli
    out = []
    for argv in json.loads(sys.argv[1]):
        logging.getLogger().handlers.clear()  # each case logs to its own captured stderr
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
            except MemoryError:
                code = "MemoryError"
        out.append([code, err.getvalue()])
    print(json.dumps(out))
""")


def test_memory_bombs_refused_before_anything_is_allocated(tmp_path):
    """Devices, pipes, a deflated checkpoint and CIFAR pickles that ask for gigabytes: one line each, under
    RLIMIT_AS = 4 GiB (in a subprocess; a pipe would block an in-process test forever)."""
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    fast = ["--n-per-class", "1", "--steps", "1", "--quiet", "--no-html", "--no-pdf", "--device", "cpu"]
    cases: list[tuple[list[str], str]] = [
        (["audit", "/dev/zero", "--out", str(tmp_path / "o1"), *fast], "not a regular file"),
        (["audit", str(fifo), "--out", str(tmp_path / "o2"), *fast], "not a regular file"),
        (["audit", "timm:test_resnet", "--checkpoint", "/dev/zero", "--out", str(tmp_path / "o3"), *fast],
         "not a regular file"),
        (["audit", "timm:test_resnet", "--checkpoint", str(fifo), "--out", str(tmp_path / "o4"), *fast],
         "not a regular file"),
        (["audit", "timm:test_resnet", "--checkpoint", str(pt_bomb(tmp_path / "bomb.pt")), "--out",
          str(tmp_path / "o5"), *fast], "unpack to"),
    ]
    for i, (name, data) in enumerate(PICKLE_BOMBS.items()):
        root = _cifar_bomb(tmp_path / f"cifar{i}", data)
        cases.append((["dataset", "cifar10lt", "--data-root", str(root), "--no-download"], "test_batch"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(limit=4 * 2**30), json.dumps([a for a, _ in cases])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    names = ["/dev/zero model", "pipe model", "/dev/zero checkpoint", "pipe checkpoint", "deflated checkpoint",
             *PICKLE_BOMBS]
    for name, (code, err), (_, needle) in zip(names, results, cases):
        assert code == 2, (name, code, err)
        assert_refused(code, err, needle)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o")]


def test_plain_cifar_pickles_still_load(tmp_path):
    """The bounds refuse bombs, not batches: protocol 2 (the official files' Python 2 layout re-pickled by Python 3:
    bytes through _codecs.encode) and protocols 4 and 5 (frames, numpy's _frombuffer) load unchanged."""
    import pickle

    from audit.data.safe_pickle import load_pickle

    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in rng.integers(0, 10, 500)],
             b"data": rng.integers(0, 256, (500, 3072), dtype=np.uint8),
             b"filenames": [b"img_%d.png" % i for i in range(500)]}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        got = load_pickle(path)
        assert np.array_equal(got[b"data"], batch[b"data"]) and got[b"labels"] == batch[b"labels"]


# --------------------------------------------------------------------------- 3. ONNX names, onnxruntime's logger


def _onnx_reshape_fails(path: Path) -> Path:
    """A valid graph that onnxruntime cannot run on a batch of 8: Reshape to (3, -1)."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Reshape", ["g", "s"], ["r"]),
             helper.make_node("MatMul", ["r", "W"], ["y"])]
    inits = [numpy_helper.from_array(np.array([3, -1], np.int64), "s"),
             numpy_helper.from_array(np.ones((1, 10), np.float32), "W")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _onnx_named_dims(path: Path) -> Path:
    """A classifier whose height is a symbolic dim named with escape sequences and a bidi override."""
    tiny_onnx(path)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N\x1b]0;pwned\x07"
    dims[2].dim_param = "H\x1b[2J\u202egnp.exe"
    onnx.save(model, str(path))
    return path


def test_onnxruntime_log_lines_never_precede_our_one_line(tmp_path):
    """A real `python cli.py audit bad.onnx` on a graph onnxruntime fails to run: its logger writes coloured
    lines to the process's stderr directly (not through Python), so only a subprocess sees them; exactly one
    line must come out, ours, naming the failing node."""
    model = _onnx_reshape_fails(tmp_path / "bad.onnx")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "audit", str(model), "--out", str(tmp_path / "o"),
                           "--n-per-class", "1", "--steps", "1", "--no-html", "--no-pdf", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tailaudit: error: ") and "its Reshape node fails" in lines[0], lines[0]
    assert_no_control(proc.stderr + proc.stdout)
    assert not (tmp_path / "o").exists()


ONNX_CASES = [
    ("dims 0 x 0", lambda p: tiny_onnx(p, shape=(None, 1, 0, 0)), "zero-size"),  # refused from the graph
    ("control and bidi characters in dim names", _onnx_named_dims, "dynamic image size"),
]


@pytest.mark.parametrize("name,make,needle", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_graph_refusals_are_one_clean_line(tmp_path, capsys, name, make, needle):
    """Refused from the graph before any onnxruntime session runs; the dim names reach the line as '?'."""
    model = make(tmp_path / "bad.onnx")
    code, out, err = run_main(["audit", str(model), "--out", str(tmp_path / "o"), "--n-per-class", "1",
                               "--steps", "1", "--no-html", "--no-pdf"], capsys)
    line = assert_refused(code, err, needle)
    assert_no_control(err + out)
    if "dim names" in name:
        assert "N?]0;pwned?" in line and "H?[2J?gnp.exe" in line, line
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 4. class folder names


ODD_NAMES = ["a\u2215b", "-e", "...", "back\\slash", "new\nline", "tab\tbed", "esc\x1b[31m", "rtl\u202eabc",
             "c8", "c9"]


def _odd_folder(root: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        Image.new("L", (8, 8), color=20 * i).save(root / name / "a.png")
    return root


def test_unusual_class_folder_names_are_classes_and_print_safely(tmp_path, capsys):
    root = _odd_folder(tmp_path / "imgs", ODD_NAMES)
    (root / ".ipynb_checkpoints").mkdir()  # a tool's hidden folder: still not a class
    Image.new("L", (8, 8)).save(root / ".ipynb_checkpoints" / "a.png")
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({n: 100 - 9 * i for i, n in enumerate(ODD_NAMES)}))
    code, out, err = run_main(["dataset", "imagefolder", "--data-root", str(root), "--class-counts", str(counts)],
                              capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(ODD_NAMES) + 1, out  # one line per class: no name starts a line of its own
    for shown in ("a\u2215b ", "-e ", "... ", "back\\slash ", "new?line ", "tab?bed ", "esc?[31m ", "rtl?abc "):
        assert any(line.startswith(shown) for line in lines), (shown, out)
    assert_no_control(out.replace("\n", "") + err)
    code, out, err = run_main(["audit", str(DEMO), "--dataset", "imagefolder", "--data-root", str(root),
                               "--class-counts", str(counts), "--out", str(tmp_path / "o"), "--force",
                               "--n-per-class", "1", "--steps", "1", "--quiet", "--no-html", "--no-pdf"], capsys)
    assert code == 0, err
    assert_no_control(out.replace("\n", "") + err.replace("\n", ""))
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["dataset"]["classes"] == sorted(ODD_NAMES)  # stored as they are; only the terminal sees '?'


def test_class_folder_name_that_is_not_utf8_is_one_line(tmp_path, capsys):
    root = _odd_folder(tmp_path / "imgs", [f"c{i}" for i in range(9)])
    bad = os.fsencode(str(root)) + b"/caf\xe9"
    os.mkdir(bad)
    Image.new("L", (8, 8)).save(bad + b"/a.png")
    code, _, err = run_main(["dataset", "imagefolder", "--data-root", str(root)], capsys)
    line = assert_refused(code, err, "not UTF-8")
    assert "caf\\xe9" in line
