"""The command line end to end on digits-LT, and every bad input the audit must refuse cleanly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from support import DEMO, ROOT



def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cli("audit", str(DEMO), "--dataset", "digitslt", "--out", str(out), "--eps", "0.1", "--steps", "10",
                   "--no-html", "--no-pdf", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_cli_audit_end_to_end_on_digits(demo_run):
    out, proc = demo_run
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == 1
    assert res["model"]["format"] == "onnx" and len(res["model"]["sha256"]) == 64
    assert res["model"]["parity"]["argmax_agreement"] == 1.0
    assert res["dataset"]["name"] == "digitslt" and len(res["dataset"]["classes"]) == 10
    assert res["dataset"]["train_counts"] == sorted(res["dataset"]["train_counts"], reverse=True)
    assert res["dataset"]["n_eval"] == 500
    assert [a["name"] for a in res["attacks"]] == ["pgd", "temp-pgd"]
    assert res["threat_model"] == {"norm": "linf", "eps": 0.1, "eps_text": "0.1"}
    assert res["seed"] == 0 and res["environment"]["torch"] == torch.__version__
    groups = [c["group"] for c in res["per_class"]]
    assert groups.count("head") == 3 and groups.count("tail") == 3
    for c in res["per_class"]:
        r = c["robust_acc"]
        assert r["worst_case"] <= r["temp-pgd"] <= r["pgd"] <= c["clean_acc"] + 1e-12  # cascade is cumulative
        lo, hi = c["robust_ci95"]["worst_case"]
        assert lo <= r["worst_case"] <= hi
        assert c["n_eval"] == 50
    s = res["summary"]
    per_class_worst = [c["robust_acc"]["worst_case"] for c in res["per_class"]]
    assert s["robust"]["worst_case"]["mean"] == pytest.approx(np.mean(per_class_worst))
    assert s["robust"]["worst_case"]["overall"] < s["clean"]["overall"]  # eps 0.1 breaks a digits CNN
    # per-point records agree with the per-class figures
    pts = json.loads((out / "points.json").read_text())
    label = np.array(pts["label"])
    clean = np.array(pts["clean_pred"]) == label
    broken = np.zeros_like(clean)
    for name in ("pgd", "temp-pgd"):
        step = np.array(pts["attacks"][name]["step"])
        assert (step[~clean] == -1).all()
        broken |= step >= 0
    robust = clean & ~broken
    for c in res["per_class"]:
        assert robust[label == c["index"]].mean() == pytest.approx(c["robust_acc"]["worst_case"])
    ex = np.load(out / "examples.npz")
    assert ex["clean"].dtype == np.uint8 and ex["clean"].shape[1:] == (1, 8, 8)
    assert (np.abs(ex["adv"].astype(int) - ex["clean"].astype(int)) <= round(0.1 * 255) + 1).all()
    assert "class" in proc.stdout and "worst case" in proc.stdout
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_same_seed_same_results(demo_run, tmp_path):
    out, _ = demo_run
    proc = run_cli("audit", str(DEMO), "--out", str(tmp_path / "again"), "--eps", "0.1", "--steps", "10",
                   "--no-html", "--no-pdf", "--quiet")
    assert proc.returncode == 0, proc.stderr
    a = json.loads((out / "points.json").read_text())
    b = json.loads((tmp_path / "again" / "points.json").read_text())
    assert a == b


def test_dataset_command_json():
    proc = run_cli("dataset", "digitslt", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["classes"] == [str(i) for i in range(10)]
    counts = d["train_counts"]
    n_max = counts[0]
    assert counts == [int(n_max * 0.01 ** (i / 9)) for i in range(10)]


def _make_bad_onnx(path: Path, kind: str) -> Path:
    from torch import nn

    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "tabular":
        torch.onnx.export(nn.Linear(64, 10).eval(), (torch.zeros(1, 64),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "b"}})
    elif kind == "five_classes":
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "b"}})
    return path


BAD = [
    ("missing model", lambda d: ["audit", str(d / "nope.onnx")], "not found"),
    ("folder as model", lambda d: ["audit", str(d)], "folder"),
    ("random bytes", lambda d: ["audit", str(_make_bad_onnx(d / "r.onnx", "random"))], "onnx"),
    ("text file", lambda d: ["audit", str(_make_bad_onnx(d / "t.onnx", "text"))], "onnx"),
    ("non-image model", lambda d: ["audit", str(_make_bad_onnx(d / "tab.onnx", "tabular"))], "image"),
    ("class count", lambda d: ["audit", str(_make_bad_onnx(d / "five.onnx", "five_classes"))], "class"),
    ("checkpoint for onnx", lambda d: ["audit", str(DEMO), "--checkpoint", str(d / "x.pth")], "checkpoint"),
    ("pth as model", lambda d: ["audit", str(_touch(d / "w.pth"))], "timm:"),
    ("unknown timm arch", lambda d: ["audit", "timm:resnet_does_not_exist", "--random-weights"],
     "timm has no architecture"),
    ("timm arch without weights", lambda d: ["audit", "timm:resnet18"], "has no trained weights without --checkpoint"),
    ("missing checkpoint", lambda d: ["audit", "timm:resnet10t", "--checkpoint", str(d / "none.pth")], "not found"),
    ("input size it cannot serve", lambda d: ["audit", "timm:test_vit", "--checkpoint", str(_vit_checkpoint(d)),
                                              "--input-size", "8"], "input"),
    ("dataset offline", lambda d: ["audit", str(DEMO), "--dataset", "cifar10lt", "--data-root", str(d / "nodata"),
                                   "--no-download"], "cifar"),
    ("unknown dataset", lambda d: ["audit", str(DEMO), "--dataset", "mnist-lt"], "dataset"),
    ("eps too large", lambda d: ["audit", str(DEMO), "--eps", "2"], "eps"),
    ("eps zero", lambda d: ["audit", str(DEMO), "--eps", "0"], "eps"),
    ("eps negative", lambda d: ["audit", str(DEMO), "--eps=-8/255"], "eps"),
    ("eps not a number", lambda d: ["audit", str(DEMO), "--eps", "eight"], "eps"),
    ("steps not a number", lambda d: ["audit", str(DEMO), "--steps", "ten"], "steps"),
    ("batch size zero", lambda d: ["audit", str(DEMO), "--batch-size", "0"], "batch"),
    ("mean not numbers", lambda d: ["audit", str(DEMO), "--mean", "a,b,c", "--std", "1,1,1"], "mean"),
    ("mean without std", lambda d: ["audit", str(DEMO), "--mean", "0.5"], "std"),
    ("unknown attack", lambda d: ["audit", str(DEMO), "--attacks", "pgd,fgsm"], "attack"),
    ("cuda without gpu", lambda d: ["audit", str(DEMO), "--device", "cuda"], "gpu"),
    # refused after the model has loaded: no "loaded ..." log line may come first
    ("labels that do not match", lambda d: ["audit", str(DEMO), "--labels", str(_text(d / "l.txt", "x\ny\n"))],
     "labels"),
]


def _vit_checkpoint(d: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    net = timm.create_model("test_vit", pretrained=False, num_classes=10)
    path = d / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _touch(p: Path) -> Path:
    p.write_bytes(b"\x80\x04K\x01.")
    return p


@pytest.mark.parametrize("name,args,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_exit_2_no_output(tmp_path, name, args, needle):
    if name == "cuda without gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so --device cuda is valid here")
    out = tmp_path / "out"
    argv = args(tmp_path) + ["--out", str(out), "--quiet", "--no-html", "--no-pdf"]
    proc = run_cli(*argv)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert needle.lower() in lines[0].lower(), lines[0]
    assert not (out / "results.json").exists()


def test_refusal_after_loading_is_one_line_without_quiet_too(tmp_path):
    """The promise holds for a default (not --quiet) run: nothing the loader logs comes before the error."""
    proc = run_cli("audit", str(DEMO), "--labels", str(_text(tmp_path / "l.txt", "x\ny\n")), "--out",
                   str(tmp_path / "out"))
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [proc.stderr.strip()]
    assert proc.stderr.startswith("tailaudit: error: --labels")


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "audit", str(tmp_path / "nope.onnx"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_audit_writes_reports_by_default_and_report_command_rerenders(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("audit", str(DEMO), "--n-per-class", "5", "--steps", "3", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    html = (out / "report.html").read_text()
    assert "digits_cnn.onnx" in html and (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    again = tmp_path / "again"
    proc = run_cli("report", str(out / "results.json"), "--compare", str(out / "results.json"), "--out", str(again),
                   "--format", "html")  # a run compared with itself reads +0.0 everywhere: refused
    assert proc.returncode == 2 and "--compare names results.json twice" in proc.stderr and not again.exists()
    proc = run_cli("report", str(out / "results.json"), "--out", str(again), "--format", "html")
    assert proc.returncode == 0, proc.stderr
    assert (again / "report.html").exists() and not (again / "report.pdf").exists()
    proc = run_cli("report", str(out / "results.json"), "--format", "docx", "--out", str(again))
    assert proc.returncode == 2 and "format" in proc.stderr
