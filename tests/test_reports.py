"""Reports: HTML and PDF from fixture results (10, 100, 1000 classes), comparisons, escaping, no fetching.

Browser checks drive Debian's /usr/bin/chromium through Playwright (never a downloaded browser;
Playwright gives it a temporary --user-data-dir); screenshots are saved under test-artifacts/
for a person to look at.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pypdf import PdfReader

from audit.errors import ConfigError, ResultsError
from report_fixtures import make_results, write_run
from reports import check_comparable, load_results
from tailaudit.api import report_renderer as render_report  # with the audit's grader, as tailaudit renders
from reports.fetcher import LocalOnlyFetcher, RefusedURL
from reports.fmt import pct, points
from reports.render import TEMPLATES, write_pdf
from support import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
A4_WIDTH_PT = 595.3
XSS_CLASS = "<img src=x onerror=alert(1)>"
XSS_MODEL = "<script>alert(1)</script>"
LOG = {"epochs": [{"epoch": e, "loss": 2.0 / e, "val_clean_acc": 0.6 + 0.02 * e, "val_robust_acc": 0.3 + 0.01 * e,
                   "lr": 0.01 * 0.8 ** e} for e in range(1, 9)]}


def pdf_text(path: Path) -> str:
    """pdftotext output with whitespace collapsed (table cells may wrap)."""
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed; run scripts/system_deps.sh")
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, text=True, check=True)
    return " ".join(out.stdout.split())


def check_pdf(path: Path, min_pages: int, max_pages: int) -> PdfReader:
    reader = PdfReader(str(path))
    assert min_pages <= len(reader.pages) <= max_pages, f"{len(reader.pages)} pages"
    for page in reader.pages:
        assert float(page.mediabox.width) <= A4_WIDTH_PT
        assert float(page.mediabox.height) <= 842.0
    return reader


def headline_figures(results: dict) -> list[str]:
    """The headline figures as the report formats them."""
    s = results["summary"]
    wc = s["robust"]["worst_case"]
    worst = results["per_class"][wc["worst_class"]]
    return [pct(s["clean"]["overall"]), pct(s["robust"]["pgd"]["overall"]), pct(wc["overall"]), pct(wc["mean"]),
            pct(worst["robust_acc"]["worst_case"]), f"{points(s['head_tail_gap']['worst_case'])} pts"]


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def run10(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run10")
    results = make_results(10)
    path = write_run(folder, results)
    started = time.perf_counter()
    files = render_report(path, folder)
    return {"results": results, "path": path, "files": files, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def run100(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run100")
    results = make_results(100)
    path = write_run(folder, results, shape=(3, 32, 32))
    started = time.perf_counter()
    files = render_report(path, folder)
    return {"results": results, "path": path, "files": files, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def compare10(tmp_path_factory, run10):
    folder = tmp_path_factory.mktemp("after10")
    after = make_results(10, seed=1, robust_shift=0.08, clean_shift=-0.03, weaker_classes=[3],
                         model_spec="runs/repair/after.onnx", sha256="cd34" * 16)
    after_path = write_run(folder, after)
    out = folder / "compare"
    files = render_report(run10["path"], out, compare=after_path, training_log=LOG)
    return {"before": run10["results"], "after": after, "files": files}


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xss")
    names = list(make_results(10)["dataset"]["classes"])
    names[7] = XSS_CLASS  # one of the weakest classes: it shows in charts, verdict, examples and table
    results = make_results(10, class_names=names, model_spec=XSS_MODEL)
    results["warnings"].append(f"warning mentioning {XSS_CLASS}")
    path = write_run(folder, results)
    return {"results": results, "files": render_report(path, folder)}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed and could not be installed here; run scripts/system_deps.sh")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as pw:
        chrome = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        yield chrome
        chrome.close()


def open_in_browser(browser, html: Path, screenshot: str) -> dict:
    """Load a report; return console errors, requests other than the file, dialogs and SVG boxes."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    errors, requests, dialogs = [], [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    def route(r):
        if r.request.url != html.as_uri() and not r.request.url.startswith("data:"):
            requests.append(r.request.url)
            return r.abort()
        return r.continue_()

    page.route("**/*", route)
    page.goto(html.as_uri(), wait_until="load")
    boxes = page.evaluate("[...document.querySelectorAll('svg.chart')].map(s => {"
                          "const b = s.getBoundingClientRect(); return [b.width, b.height]; })")
    info = {"errors": errors, "requests": requests, "dialogs": dialogs, "boxes": boxes,
            "xss_imgs": page.evaluate("document.querySelectorAll('img[src=\"x\"], script').length"),
            "text": page.evaluate("document.body.innerText")}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    page.close()
    return info


# ----------------------------------------------------------------------------------------- loading

def test_load_results_rejects_bad_files(tmp_path):
    with pytest.raises(ResultsError, match="not found"):
        load_results(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(bad)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({**make_results(10), "schema_version": 99}), encoding="utf-8")
    with pytest.raises(ResultsError, match="schema_version 99"):
        load_results(future)
    partial = make_results(10)
    del partial["summary"]["robust"]["worst_case"]
    (tmp_path / "partial.json").write_text(json.dumps(partial), encoding="utf-8")
    with pytest.raises(ResultsError, match="summary.robust.worst_case"):
        load_results(tmp_path / "partial.json")
    with pytest.raises(ResultsError, match="not found"):
        render_report(tmp_path / "nope.json", tmp_path / "out")
    good = write_run(tmp_path / "good", make_results(10), examples=False)
    assert load_results(good).class_names[0] == "airplane"


def test_errors_are_one_line(tmp_path):
    future = tmp_path / "r.json"
    future.write_text(json.dumps({"schema_version": 2}), encoding="utf-8")
    with pytest.raises(ResultsError) as err:
        load_results(future)
    assert "\n" not in str(err.value) and "newer tailaudit" in str(err.value) and "upgrade" in str(err.value)
    future.write_text(json.dumps({"schema_version": "1"}), encoding="utf-8")
    with pytest.raises(ResultsError) as err:
        load_results(future)
    assert "\n" not in str(err.value) and "re-run" in str(err.value)


# ----------------------------------------------------------------------------------------- audit reports

def test_render_10_classes_html_and_pdf(run10):
    files, results = run10["files"], run10["results"]
    assert set(files) == {"html", "pdf"} and all(p.is_file() for p in files.values())
    assert files["html"].name == "report.html" and files["html"].parent == run10["path"].parent
    html = files["html"].read_text(encoding="utf-8")
    # one self-contained file: CSS inline, charts inline SVG, images as data URIs, nothing external
    assert html.count("<svg") >= 5 and "<style>" in html
    assert not re.search(r"<script|<link|(src|href)=\"(https?:|//|file:)|url\((https?:|file:)", html)
    assert html.count('src="data:image/png;base64,') >= 9  # 3 images x at least 3 weak classes
    assert "<image" not in html  # charts are vector: no raster inside any SVG
    for name in results["dataset"]["classes"]:
        assert name in html
    assert "Robust accuracy on the 3 rarest classes is" in html and "points below the 3 most common" in html
    check_pdf(files["pdf"], 2, 6)
    text = pdf_text(files["pdf"])
    for needle in [*results["dataset"]["classes"], *headline_figures(results), "Spearman ρ = 0.88", "page 1 of"]:
        assert needle in text, needle


def test_render_100_classes(run100):
    files, results = run100["files"], run100["results"]
    html = files["html"].read_text(encoding="utf-8")
    per_class = re.search(r'<svg id="a-per-class-figure_1".*?</svg>', html, re.S) or \
        re.search(r'<svg[^>]*aria-label="Per-class clean and robust.*?</svg>', html, re.S)
    shown = {n for n in results["dataset"]["classes"] if f">{n}<" in per_class.group(0)}
    assert len(shown) == 20  # the worst 20, not 100 unreadable bars
    assert "Adversarial confusion heatmap" not in html and "largest flows" in html
    check_pdf(files["pdf"], 4, 12)
    text = pdf_text(files["pdf"])
    for needle in [*results["dataset"]["classes"], *headline_figures(results)]:
        assert needle in text, needle  # the full table is there


@pytest.mark.slow
def test_render_1000_classes(tmp_path):
    results = make_results(1000)
    path = write_run(tmp_path, results, shape=(3, 32, 32))
    files = render_report(path, tmp_path)  # render time is a benchmark figure (docs/benchmarks.md), not asserted here
    check_pdf(files["pdf"], 10, 60)
    text = pdf_text(files["pdf"])
    for needle in ["class_000", "class_500", "class_999", *headline_figures(results)]:
        assert needle in text, needle
    html = files["html"].read_text(encoding="utf-8")
    assert html.count("<tr") > 1000 and len(html) < 5_000_000


def test_html_in_headless_chromium(run10, run100, browser):
    for run, shot in ((run10, "report-10.png"), (run100, "report-100.png")):
        info = open_in_browser(browser, run["files"]["html"], shot)
        assert info["errors"] == [] and info["requests"] == [] and info["dialogs"] == []
        assert len(info["boxes"]) >= 4
        assert all(w > 50 and h > 50 for w, h in info["boxes"]), info["boxes"]
        assert (ARTIFACTS / shot).stat().st_size > 10_000
        assert run["results"]["dataset"]["classes"][0] in info["text"]


def test_report_is_deterministic(tmp_path):
    results = make_results(10)
    a = render_report(results, tmp_path / "a", formats=["html"])["html"].read_text(encoding="utf-8")
    b = render_report(results, tmp_path / "b", formats=["html"])["html"].read_text(encoding="utf-8")
    assert a == b


def test_formats_and_atomic_writes(tmp_path):
    results = make_results(10)
    snapshot = copy.deepcopy(results)
    files = render_report(results, tmp_path, formats="html", basename="summary")
    assert set(files) == {"html"} and files["html"].name == "summary.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.html"]  # no temporary files left
    assert results == snapshot  # the caller's dict is not changed
    with pytest.raises(ConfigError, match="docx"):
        render_report(results, tmp_path, formats=["html", "docx"])


def test_examples_missing_or_outside_folder(tmp_path):
    results = make_results(10)
    write_run(tmp_path / "none", results, examples=False)
    html = render_report(tmp_path / "none" / "results.json", tmp_path / "none", formats=["html"])["html"]
    assert "No example images" in html.read_text(encoding="utf-8")
    (tmp_path / "secret.npz").write_bytes(b"not for the report")
    escaping = copy.deepcopy(results)
    escaping["files"]["examples"] = "../secret.npz"
    path = write_run(tmp_path / "escape", escaping, examples=False)
    text = render_report(path, tmp_path / "escape", formats=["html"])["html"].read_text(encoding="utf-8")
    assert "refused (outside the results folder)" in text and "data:image/png" not in text


# ----------------------------------------------------------------------------------------- escaping

def test_user_strings_are_escaped_in_html(xss_run):
    html = xss_run["files"]["html"].read_text(encoding="utf-8")
    assert XSS_CLASS not in html and XSS_MODEL not in html
    assert "<script" not in html and "onerror=alert(1)>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_user_strings_are_text_in_chromium(xss_run, browser):
    info = open_in_browser(browser, xss_run["files"]["html"], "report-escaping.png")
    assert info["xss_imgs"] == 0 and info["dialogs"] == [] and info["errors"] == [] and info["requests"] == []
    assert XSS_CLASS in info["text"] and XSS_MODEL in info["text"]


def test_user_strings_are_text_in_pdf(xss_run):
    text = pdf_text(xss_run["files"]["pdf"])
    assert XSS_CLASS in text and XSS_MODEL in text


# ----------------------------------------------------------------------------------------- comparison

def test_check_comparable_refuses_different_runs():
    before = make_results(10)
    check_comparable(before, make_results(10, seed=3, robust_shift=0.1))  # same settings: fine
    cases = {
        "threat model": make_results(10, eps_text="4/255"),
        "evaluated test points": {**before, "dataset": {**before["dataset"], "eval_indices_sha256": "0" * 64}},
        "evaluation size": {**before, "dataset": {**before["dataset"], "n_eval": 400}},
        "classes": {**before, "dataset": {**before["dataset"], "classes": [*before["dataset"]["classes"][:9], "x"]}},
        "attack settings": {**before, "attacks": [before["attacks"][0], {**before["attacks"][1], "temperature": 2}]},
        "attack mode": {**before, "mode": "independent"},
        "dataset": {**before, "dataset": {**before["dataset"], "name": "cifar10lt"}},
    }
    for what, after in cases.items():
        with pytest.raises(ResultsError, match=what):
            check_comparable(before, after)


def test_compare_refuses_and_writes_nothing(tmp_path):
    before = write_run(tmp_path / "b", make_results(10), examples=False)
    after = write_run(tmp_path / "a", make_results(10, eps_text="4/255"), examples=False)
    with pytest.raises(ResultsError, match="threat model") as err:
        render_report(before, tmp_path / "out", compare=after)
    assert "\n" not in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_compare_report(compare10):
    files, before, after = compare10["files"], compare10["before"], compare10["after"]
    html = files["html"].read_text(encoding="utf-8")
    # class 3 ("cat") lost ~40 points: flagged in the verdict, the chart and the table
    flagged = re.findall(r'<tr class="flag">\s*<td class="num">(\d+)</td><td class="name">([^<]+)</td>', html)
    assert (str(3), "cat") in flagged
    assert "got less robust beyond the 95% interval" in html and "▼ worse" in html
    assert "Training" in html and 'aria-label="Training curves"' in html
    check_pdf(files["pdf"], 3, 10)
    text = pdf_text(files["pdf"])
    rb, ra = before["summary"]["robust"]["worst_case"]["overall"], after["summary"]["robust"]["worst_case"]["overall"]
    cb, ca = before["summary"]["clean"]["overall"], after["summary"]["clean"]["overall"]
    for needle in [pct(rb), pct(ra), points(ra - rb), pct(cb), pct(ca), points(ca - cb), "▼ worse", "cat",
                   "runs/repair/after.onnx", "The trade-off: clean accuracy fell"]:
        assert needle in text, needle


def test_compare_in_chromium(compare10, browser):
    info = open_in_browser(browser, compare10["files"]["html"], "compare-10.png")
    assert info["errors"] == [] and info["requests"] == [] and len(info["boxes"]) >= 4
    assert all(w > 50 and h > 50 for w, h in info["boxes"])


def test_compare_same_run_flags_nothing_and_skips_training(tmp_path):
    results = make_results(10)
    html = render_report(results, tmp_path, compare=results, formats=["html"])["html"].read_text(encoding="utf-8")
    assert "No class got less robust" in html and 'class="flag"' not in html
    assert "Training curves" not in html


def test_compare_100_classes_html(tmp_path, run100):
    after = make_results(100, seed=5, robust_shift=0.05, weaker_classes=[40])
    files = render_report(run100["path"], tmp_path, compare=after, formats=["html"])
    html = files["html"].read_text(encoding="utf-8")
    assert "class_040" in re.search(r'aria-label="Per-class change.*?</svg>', html, re.S).group(0)
    assert html.count('class="flag"') >= 1


# ----------------------------------------------------------------------------------------- no fetching

def test_fetcher_refuses_network_and_outside_files(tmp_path):
    fetcher = LocalOnlyFetcher(TEMPLATES)
    for url in ("http://example.com/x.png", "https://example.com/x.css", "ftp://example.com/x",
                "file:///etc/passwd", (TEMPLATES / ".." / "render.py").resolve().as_uri()):
        with pytest.raises(RefusedURL):
            fetcher.fetch(url)
    assert fetcher.fetch("data:text/plain;base64,aGk=").read() == b"hi"
    assert b"@page" in fetcher.fetch((TEMPLATES / "report.css").as_uri()).read()


def test_pdf_render_fetches_nothing(tmp_path, monkeypatch):
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    html = ('<html><body><p>x</p><img src="http://example.com/x.png"><img src="file:///etc/passwd">'
            '<link rel="stylesheet" href="https://example.com/s.css"></body></html>')
    target = tmp_path / "x.pdf"
    write_pdf(html, target)
    assert target.stat().st_size > 0 and attempts == []


def test_sparse_results_render(tmp_path):
    """Optional fields absent, one attack, independent mode, shot groups: the report still renders."""
    results = make_results(12)
    results["attacks"] = results["attacks"][:1]
    results["mode"] = "independent"
    results["dataset"]["groups"] = {"many": results["dataset"]["groups"]["head"],
                                    "medium": results["dataset"]["groups"]["medium"],
                                    "few": results["dataset"]["groups"]["tail"]}
    results["dataset"]["group_rule"] = "shots"
    for row in results["per_class"]:
        row["group"] = {"head": "many", "tail": "few"}.get(row["group"], row["group"])
        row["robust_acc"] = {"pgd": row["robust_acc"]["pgd"], "worst_case": row["robust_acc"]["pgd"]}
        for key in ("robust_ci95", "clean_ci95", "broken_by"):
            row.pop(key)
        row["weight_norm"] = None
    s = results["summary"]
    s["robust"] = {"pgd": s["robust"]["pgd"], "worst_case": s["robust"]["pgd"]}
    for node in (s["clean"], s["robust"]["pgd"]):
        node.pop("overall")
        node["spearman"] = None
    s["head_tail_gap"] = {"clean": 0.1, "worst_case": 0.005}
    for key in ("confusion", "weight_norm_spearman"):
        s.pop(key)
    for key in ("warnings", "files", "timings", "environment", "tool", "created"):
        results.pop(key)
    results["model"]["parity"] = None
    text = render_report(results, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8")
    assert "about the same as on the 4 most common" in text
    assert "No example images were kept" in text and "No broken points were recorded" in text
    assert "Temperature-PGD" not in text and "Sanity warnings" not in text
    assert text.count("<svg") == 3  # per-class, groups, scatter; no attack comparison with one attack
