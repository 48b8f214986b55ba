"""The model's label order: ``--labels FILE`` and the check for a permuted order.

A model trained with another class order than the dataset's (e.g. an image folder sorted
alphabetically) scores near chance although it works. ``--labels`` names the model's outputs;
:func:`check_label_order` spots the likely case from the clean confusion matrix.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..bounds import MAX_CLASSES
from ..errors import ConfigError
from ..contract.jsonfile import parse_json, read_text
from ..contract.figures import wilson_interval
from ..contract.model import LabelCheck, OutputMap

MAX_LABELS_BYTES = MAX_CLASSES * 256  # one name a line, up to 256 bytes each for the most classes allowed

MIN_GAIN = 0.2  # re-mapped accuracy must beat the current one by 20 points or more ...
MIN_MAPPED = 0.5  # ... and reach at least 50%: on few points an assignment finds 30% in pure noise


def read_label_order(path: str | Path, class_names: Sequence[str]) -> list[int]:
    """Dataset class index of each model output, from a file naming the outputs in order.

    The file holds one class name per line (blank lines ignored) or a JSON list of names. Every
    dataset class must appear exactly once; returns ``order`` with ``order[c]`` = the output that
    means dataset class ``c`` (what :meth:`PixelClassifier.set_output_order` takes).
    """
    p = Path(path).expanduser()
    hint = "give one class name per line, in the model's output order (or a JSON list)"
    try:
        text = read_text(p, max_bytes=MAX_LABELS_BYTES)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read --labels {p} ({why}); {hint}") from None
    names: Any
    if text.lstrip().startswith("["):
        try:
            names = parse_json(text)
        except ValueError as exc:
            raise ConfigError(f"--labels {p} starts like JSON but is not a valid JSON list ({exc}); {hint}") from None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            raise ConfigError(f"--labels {p} must list class names (strings); {hint}")
        names = [str(n).strip() for n in names]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    wanted = list(class_names)
    if len(names) != len(wanted) or sorted(names) != sorted(wanted):
        known, given = set(wanted), set(names)
        missing = sorted(known - given)
        unknown = sorted(given - known)
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        detail = "; ".join(t for t in (f"missing: {', '.join(missing[:5])}" if missing else "",
                                       f"not in the dataset: {', '.join(unknown[:5])}" if unknown else "",
                                       f"repeated: {', '.join(dup[:5])}" if dup else "") if t)
        raise ConfigError(f"--labels {p} lists {len(names)} names that do not match the dataset's {len(wanted)} "
                          f"class names ({detail or 'different names'}); {hint}")
    output_of = {n: i for i, n in enumerate(names)}
    return [output_of[n] for n in wanted]


def clean_confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``m[true][pred]`` counts of the clean predictions."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return m


def check_label_order(confusion: np.ndarray, class_names: Sequence[str],
                      order: Optional[Sequence[int]] = None) -> Optional[LabelCheck]:
    """``label_check`` for results.json when a re-mapping of outputs to classes fits far better, else None.

    Solves the assignment (``scipy.optimize.linear_sum_assignment``) that maximises the clean
    accuracy after re-mapping. Suspected when the re-mapped accuracy is at least 50%, beats the
    current one by at least 20 points, and their 95% Wilson intervals do not overlap (an
    assignment fitted to a chance-level model on few points finds 30% by luck). ``order`` is the
    ``--labels`` order already applied, so the suggested mapping names the model's real output indices.
    """
    from scipy.optimize import linear_sum_assignment

    m = np.asarray(confusion, dtype=np.int64)
    n = int(m.sum())
    if n == 0 or m.shape[0] < 2:
        return None
    rows, cols = linear_sum_assignment(m, maximize=True)  # rows: true class, cols: predicted column
    now_k, mapped_k = int(np.trace(m)), int(m[rows, cols].sum())
    now, mapped = now_k / n, mapped_k / n
    if (mapped - now < MIN_GAIN or mapped < MIN_MAPPED
            or wilson_interval(mapped_k, n)[0] <= wilson_interval(now_k, n)[1]):
        return None
    class_of_column = {int(c): int(r) for r, c in zip(rows, cols)}
    output_of_column = list(order) if order is not None else list(range(m.shape[0]))
    # "assumed": what this run took the output to mean (the dataset order, or the --labels order)
    mapping = sorted((OutputMap(output=int(output_of_column[c]), class_name=class_names[class_of_column[c]],
                                assumed=class_names[c]) for c in range(m.shape[0])), key=lambda d: d.output)
    return LabelCheck(suspected=True, accuracy_now=now, accuracy_mapped=mapped, mapping=mapping)


def label_warning(check: LabelCheck) -> str:
    """The warning line for a suspected permutation, with the ``--labels`` file to try."""
    listing = ",".join(m.class_name for m in check.mapping)
    return (f"the label order looks permuted: clean accuracy is {check.accuracy_now:.1%}, but "
            f"{check.accuracy_mapped:.1%} if the model's outputs meant other classes; if the model was trained "
            f"with another class order, pass --labels FILE with one class name per line in output order, e.g. "
            f"{listing}")
