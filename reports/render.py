"""Render audit and comparison reports to one self-contained HTML file and an A4 PDF."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from audit.errors import ConfigError, ResultsError
from audit.contract.files import output_error, prepare_out_dir
from audit.contract.repair import RepairDocument, TrainingLog

from .audit_view import audit_context
from .corruption_only_view import corruption_only_context
from .compare_view import compare_context
from .fmt import interval, keep_words, num, pct, points
from .load import Grader, Results, check_comparable, coerce_results
from .models_view import MAX_MODELS, model_names, models_context
from .repair_view import find_repair_files

LOG = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
FORMATS = ("html", "pdf")


def make_env() -> Environment:
    """Jinja2 environment on reports/templates with autoescape always on."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(pct=pct, num=num, points=points, interval=interval, keep_words=keep_words)
    return env


def render_html(context: Mapping[str, Any], template: str) -> str:
    """The report as one HTML string."""
    return make_env().get_template(template).render(**context)


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _SvgStyleNoise(logging.Filter):
    """Drops WeasyPrint's warnings about SVG presentation properties (fill, stroke, …) in style
    attributes of inline SVG: its HTML stylesheet parser does not know them, its SVG renderer does."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Ignored `") and message.endswith("unknown property."))


@contextlib.contextmanager
def _quiet_svg_css() -> Iterator[None]:
    logger = logging.getLogger("weasyprint")
    noise = _SvgStyleNoise()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def write_pdf(html: str, target: Path) -> None:
    """HTML -> A4 PDF with WeasyPrint; resources only from data: URLs and the templates folder."""
    import weasyprint  # imported lazily: loading it takes a moment and HTML-only callers do not need it

    from .fetcher import LocalOnlyFetcher

    def write(tmp: Path) -> None:
        document = weasyprint.HTML(string=html, base_url=str(TEMPLATES), url_fetcher=LocalOnlyFetcher(TEMPLATES))
        with _quiet_svg_css():
            document.write_pdf(str(tmp))

    _atomic_write(target, write)


def source_names(sources: Sequence[str], paired: bool = True) -> str:
    """'before/results.json and after/results.json': as many trailing path parts as it takes to tell them apart;
    two ``paired`` files (a repair) are labelled before and after, peers (model comparison) are not."""
    if len(sources) == 1:
        return Path(sources[0]).name if sources[0] != "results" else "the results"
    if all(s == "results" for s in sources):
        return "the before and after results" if paired and len(sources) == 2 else "the results"
    parts = [Path(s).resolve().parts if s != "results" else ("results",) for s in sources]
    depth = 1
    longest = max(len(p) for p in parts)
    while depth < longest and len({"/".join(p[-depth:]) for p in parts}) < len(parts):
        depth += 1
    names = ["/".join(p[-depth:]) for p in parts]
    if len(sources) == 2 and paired:
        return f"{names[0]} (before) and {names[1]} (after)"
    return ", ".join(names[:-1]) + " and " + names[-1]


def _formats(formats: Sequence[str] | str) -> list[str]:
    if isinstance(formats, str):
        formats = formats.split(",")
    wanted = [f.strip().lower() for f in formats if f and f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise ConfigError(f"unknown report format {', '.join(unknown) or '(none)'}; use html, pdf or html,pdf")
    return list(dict.fromkeys(wanted))


def _source(results: str | Path | Results) -> str:
    """The file a report was rendered from, for its footer ("results" for results in memory)."""
    return str(results) if isinstance(results, (str, Path)) else "results"


def render_report(
    results: str | Path | Results,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    compare: str | Path | Results | Sequence[str | Path | Results] | None = None,
    training_log: TrainingLog | Mapping[str, Any] | None = None,
    repair: RepairDocument | Mapping[str, Any] | None = None,
    basename: str = "report",
    grade: Grader | None = None,
) -> dict[str, Path]:
    """Render a report from results (a results.json path, typed :class:`~audit.contract.model.AuditResults` or a
    parsed results.json); with ``compare`` (one or more further results), a comparison.

    Two results files of a repair (``repair.json`` beside their ``before/`` and ``after/`` folders, or
    ``repair`` / ``training_log`` given, typed (:mod:`audit.contract.repair`) or as parsed JSON) or of the same
    model file (a model changed in place and audited again) make a before/after report, with the repair
    folder's ``training_log.json`` for the training section. Any other set of files (different models, or more
    than two) makes a side-by-side model comparison: never "before" and "after".

    A file written before verdicts were stored is graded by ``grade`` (``audit.checks.verdict.grade_on_load``, handed
    in by the application layer: the reports hold no verdict rules) and refused without it.

    Files are written atomically as ``out_dir/basename.html`` and ``.pdf``; returns
    ``{"html": path, "pdf": path}`` for the formats asked for. Raises :class:`ResultsError`
    for unreadable or incomparable results, :class:`ConfigError` for an unknown format.
    """
    wanted = _formats(formats)
    out = prepare_out_dir(out_dir)
    started = time.perf_counter()
    first, first_dir = coerce_results(results, out, grade)
    sources = [_source(results)]
    others = [] if compare is None else list(compare) if isinstance(compare, (list, tuple)) else [compare]
    if len(others) + 1 > MAX_MODELS:
        raise ConfigError(f"a comparison shows at most {MAX_MODELS} models; got {len(others) + 1}")
    loaded = [coerce_results(o, out, grade) for o in others]
    if loaded and any(r.attack_free for r in [first, *(r for r, _ in loaded)]):
        raise ResultsError("a corruption-only audit (--attacks none) has no attack figures to compare; render it "
                           "on its own, or compare audits that ran attacks")
    sources += [_source(o) for o in others]
    if len(loaded) == 1:
        second, second_dir = loaded[0]
        found_log, found_repair = find_repair_files(first_dir, second_dir)
        repair = repair if repair is not None else found_repair
        training_log = training_log if training_log is not None else found_log
    same_model = len(loaded) == 1 and str(first.model.spec) == str(loaded[0][0].model.spec)
    if len(loaded) == 1 and (repair is not None or training_log is not None or same_model):  # before and after
        check_comparable(first, second)
        context = compare_context(first, first_dir, second, second_dir, training_log, repair)
        template = "compare.html.j2"
    elif loaded:  # peers: different models (or runs) on the same points
        runs, folders = [first] + [r for r, _ in loaded], [first_dir] + [f for _, f in loaded]
        names = model_names(runs, folders)
        for name, run in zip(names[1:], runs[1:]):
            check_comparable(first, run, (names[0], name))
        context = models_context(runs, folders)
        template = "models.html.j2"
    elif first.attack_free:  # --attacks none: a report without any attack figure
        context = corruption_only_context(first, first_dir)
        template = "corruption_audit.html.j2"
    else:
        context = audit_context(first, first_dir)
        template = "audit.html.j2"
    context["sources"] = source_names(sources, paired=template == "compare.html.j2")
    html = render_html(context, template)
    LOG.debug("report HTML built in %.2f s", time.perf_counter() - started)
    written: dict[str, Path] = {}
    try:
        if "html" in wanted:
            target = out / f"{basename}.html"
            _atomic_write(target, lambda tmp: tmp.write_text(html, encoding="utf-8"))
            written["html"] = target
        if "pdf" in wanted:
            target = out / f"{basename}.pdf"
            write_pdf(html, target)
            written["pdf"] = target
    except OSError as exc:
        for path in written.values():  # the set or nothing
            path.unlink(missing_ok=True)
        raise output_error(exc, target) from None
    LOG.debug("wrote %s in %.1f s", ", ".join(str(p) for p in written.values()), time.perf_counter() - started)
    return written
