"""Nothing written outside --out, nothing sent anywhere, and a CLI that behaves like a Unix tool (issue 29, item 6):
onnxruntime's telemetry files, its shape-inference scratch files, a closed or full stdout, UTF-8 class names
under LC_ALL=C with an ASCII file-system encoding. Every case runs the real CLI in a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from support import ROOT

CLI = [sys.executable, str(ROOT / "cli.py")]


def _export(net: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def _quantised(folder: Path) -> Path:
    """A digits CNN quantised by onnxruntime's own quantize_static (QLinearConv, QGemm), as users make them."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 10))
    src = _export(net, (1, 8, 8), folder / "float.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.items = iter([{"input": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(4)])

        def get_next(self):  # noqa: ANN201
            return next(self.items, None)

    quantize_static(str(src), str(folder / "q.onnx"), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return folder / "q.onnx"


@pytest.mark.slow
def test_an_onnx_audit_leaves_home_and_the_current_folder_alone(tmp_path):
    """No telemetry under HOME/.cache/Microsoft; symbolic shape inference of a quantised model writes no
    sym_shape_infer_temp.onnx into the current folder (it used to overwrite a user's file of that name)."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir(), cwd.mkdir()
    model = _quantised(tmp_path)
    (cwd / "sym_shape_infer_temp.onnx").write_text("the user's own file")
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    env.pop("XDG_CACHE_HOME", None)
    proc = subprocess.run([*CLI, "audit", str(model), "--dataset", "digitslt", "--out", str(tmp_path / "out"),
                           "--n-per-class", "1", "--steps", "1", "--quiet", "--no-html", "--no-pdf", "--threads", "1"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 4) and "Traceback" not in proc.stderr, proc.stderr  # 4: this model cannot be graded
    assert sorted(p.name for p in cwd.iterdir()) == ["sym_shape_infer_temp.onnx"]
    assert (cwd / "sym_shape_infer_temp.onnx").read_text() == "the user's own file"
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert not [p for p in written if "matplotlib" not in p], written  # matplotlib's font cache is its own


def test_a_closed_or_full_stdout_ends_like_a_unix_tool(tmp_path):
    cmd = [*CLI, "dataset", "digitslt"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == "", err  # quiet, SIGPIPE's status, as `yes | head -1` leaves
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "cannot write to standard output" in lines[0], done.stderr


@pytest.mark.slow
def test_utf8_class_folders_under_an_ascii_locale(tmp_path):
    """LC_ALL=C with PYTHONUTF8=0: Python decodes file names as ASCII; valid UTF-8 class folders must still be
    classes with their real names (they were refused as "not UTF-8"), and printing them must not fail."""
    from PIL import Image

    names = ["café", "naïve", "日本"]
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(names):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((8, 8, 3), 40 + 80 * c, dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
    torch.manual_seed(0)
    model = _export(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), (3, 8, 8), tmp_path / "lin3.onnx")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"], env=env,
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "ascii"  # the case under test really is an ASCII file-system encoding
    proc = subprocess.run([*CLI, "audit", str(model), "--dataset", "imagefolder", "--data-root", str(tmp_path / "data"),
                           "--out", str(tmp_path / "out"), "--n-per-class", "2", "--steps", "1", "--quiet", "--no-html",
                           "--no-pdf", "--force", "--threads", "1"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["dataset"]["classes"] == names
    assert b"caf\\xe9" in proc.stdout  # the table, with what the locale cannot show escaped
