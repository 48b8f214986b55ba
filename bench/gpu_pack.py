"""Pack what a GPU machine needs for the CIFAR-10-LT repair comparison into .gpudata/ (git-ignored there).

The device machine cannot see ../shared, and a call carries at most 64 MiB, so this copies only the
CIFAR-10-LT rho 0.01 training images (the 12406 the dataset loader selects) and the test images into
``.gpudata/cifar10lt.zip`` (about 25 MB), which ``bench/gpu_session.sh`` unpacks into .cache/ there.

    .venv/bin/python bench/gpu_pack.py
"""
from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import cifar10_root  # noqa: E402

from audit.data.cifar import CIFAR10, _load_imagefolder  # noqa: E402


def main() -> None:
    root = cifar10_root().resolve()
    parts = _load_imagefolder(CIFAR10, root, 0.01)
    out = ROOT / ".gpudata" / "cifar10lt.zip"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:  # JPEGs do not compress further
        for path in list(parts["train"].paths) + list(parts["test"].paths):
            z.write(path, Path("cifar10") / Path(path).resolve().relative_to(root))
    shutil.move(tmp, out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, train counts {parts['counts']}")


if __name__ == "__main__":
    main()
