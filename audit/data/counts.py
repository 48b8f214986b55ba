"""Training counts given by the user (``--class-counts FILE``): the model's real counts per class."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..bounds import MAX_COUNT
from ..errors import DatasetError
from ..contract.jsonfile import read_json_file

COUNTS_HINT = ('pass --class-counts FILE with JSON {"class": count, ...} '
               "or a list of counts in sorted class-folder order")


def read_class_counts(path: Path, class_names: Sequence[str]) -> list[int]:
    """Training counts per class from a JSON dict (by class name) or list (class order)."""
    path = Path(path)
    raw = read_json_file(path, DatasetError, what="class counts file", fix=COUNTS_HINT,
                         missing=f"does not exist; {COUNTS_HINT}")
    if isinstance(raw, dict):
        if set(raw) != set(class_names):
            missing = sorted(set(class_names) - set(raw))
            extra = sorted(set(raw) - set(class_names))
            raise DatasetError(
                f"class counts {path} do not match the class folders (missing: {', '.join(missing[:5]) or '-'}; "
                f"unknown: {', '.join(extra[:5]) or '-'}); {COUNTS_HINT}"
            )
        values = [raw[c] for c in class_names]
    elif isinstance(raw, list):
        if len(raw) != len(class_names):
            raise DatasetError(f"class counts {path} list {len(raw)} counts for {len(class_names)} class folders; "
                               f"{COUNTS_HINT}")
        values = raw
    else:
        raise DatasetError(f"class counts {path} is neither a JSON object nor a list; {COUNTS_HINT}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT for v in values):
        raise DatasetError(f"class counts {path} must be whole numbers in 0..{MAX_COUNT:.0e}; {COUNTS_HINT}")
    return [int(v) for v in values]
