"""Image files decode to the pixels a viewer shows, in every mode Pillow opens (issue 29 item 5).

Each case writes a file of known pixel values the way image tools write them and checks the decoded
pixels against those values; a 16-bit digits folder audits like the same digits at 8 bits; hidden files
and folders (.ipynb_checkpoints/, .thumbs/, dotfiles) are never counted as images.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from audit.data import ImageFileDataset, load_dataset
from audit.data.core import image_size, scan_image_folder
from support import DEMO, TINY_AUDIT, run_main


def decoded(path) -> np.ndarray:
    """The audit's pixels of one file as 0..255 values (H x W x 3)."""
    x, _ = ImageFileDataset([path], [0])[0]
    return (x.numpy().transpose(1, 2, 0) * 255).round().astype(int)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 10 * 257, 128 * 257], [200 * 257 + 100, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)  # mode I;16, a 16-bit greyscale PNG
    assert Image.open(path).mode.startswith("I")
    expected = np.round(values / 257.0).astype(int)  # v * 255 / 65535
    got = decoded(path)
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 1], expected)
    assert expected.tolist() == [[0, 10, 128], [200, 255, 4]]


def test_transparency_is_dropped_as_torchvision_does(tmp_path):
    """Transparent pixels keep their stored colour, as torchvision's ImageFolder loader (convert("RGB")) gives
    them to a training pipeline; checked against known values and against the loader itself."""
    from torchvision.datasets.folder import pil_loader
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * 759)
    for x, i in enumerate([0, 1, 2]):
        pal.putpixel((x, 0), i)
    pal.save(tmp_path / "palette.png", transparency=0)  # palette entry 0 (red) is transparent
    pal.save(tmp_path / "palette-bytes.png", transparency=bytes([0, 255, 128]))  # per-entry alpha: 0, 255, 128
    stored = [[[255, 0, 0], [0, 0, 255], [0, 255, 0]]]
    assert decoded(tmp_path / "palette.png").tolist() == stored
    assert decoded(tmp_path / "palette-bytes.png").tolist() == stored
    Image.new("RGBA", (1, 1), (200, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGBA", (1, 1), (200, 40, 0, 255)).save(tmp_path / "opaque.png")
    Image.new("LA", (1, 1), (90, 0)).save(tmp_path / "grey-clear.png")
    assert decoded(tmp_path / "clear.png").tolist() == [[[200, 0, 0]]]
    assert decoded(tmp_path / "opaque.png").tolist() == [[[200, 40, 0]]]
    assert decoded(tmp_path / "grey-clear.png").tolist() == [[[90, 90, 90]]]
    for name in ("palette.png", "palette-bytes.png", "clear.png", "grey-clear.png"):
        assert decoded(tmp_path / name).tolist() == np.asarray(pil_loader(str(tmp_path / name))).tolist()


def test_cmyk_jpeg_converts_with_the_black_channel(tmp_path):
    Image.new("CMYK", (8, 8), (128, 0, 0, 128)).save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got = decoded(tmp_path / "cmyk.jpg")[0, 0]
    expected = np.array([255 * (127 / 255) * (127 / 255), 127, 127])  # (1 - c)(1 - k), (1 - m)(1 - k), ...
    assert np.abs(got - expected).max() <= 3


@pytest.mark.parametrize("orientation,turn", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    """A camera's portrait photo: stored landscape with an EXIF Orientation tag, shown (and audited) turned."""
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # 2 rows x 3 columns, every pixel distinct
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned-{orientation}.png"
    im.save(path, exif=exif)
    shown = np.rot90(stored, k=turn)  # what a viewer shows (k=-1: a quarter turn clockwise)
    assert np.array_equal(decoded(path), shown.astype(int))
    assert image_size(path) == (shown.shape[1], shown.shape[0])


def test_other_modes_keep_their_pixels(tmp_path):
    Image.new("1", (2, 1), 1).save(tmp_path / "bilevel.png")
    Image.new("L", (1, 1), 77).save(tmp_path / "grey.png")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "rgb.bmp")
    assert decoded(tmp_path / "bilevel.png").tolist() == [[[255] * 3, [255] * 3]]
    assert decoded(tmp_path / "grey.png").tolist() == [[[77, 77, 77]]]
    assert decoded(tmp_path / "rgb.bmp").tolist() == [[[1, 2, 3]]]


def _hidden_extras(cdir) -> None:
    """What notebooks, file browsers and macOS leave in a class folder: never images of the class."""
    for sub in (".ipynb_checkpoints", ".thumbs"):
        (cdir / sub).mkdir()
        Image.new("L", (8, 8), 255).save(cdir / sub / "copy-checkpoint.png")
    Image.new("L", (8, 8), 255).save(cdir / ".hidden.png")
    (cdir / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")


def _digits_folder(root, bits: int, per_class: int = 5, hidden: bool = False):
    """The first ``per_class`` digitslt evaluation images of each class as PNGs of ``bits`` bits (test/<class>/)."""
    data = load_dataset("digitslt")
    taken: dict[int, int] = {}
    for i in range(len(data.test)):
        x, y = data.test[i]
        if taken.get(y, 0) >= per_class:
            continue
        cdir = root / "test" / data.class_names[y]
        cdir.mkdir(parents=True, exist_ok=True)
        if hidden and not taken.get(y):
            _hidden_extras(cdir)
        pixels = x[0].numpy()
        if bits == 16:
            Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(cdir / f"{i:04d}.png")
        else:
            Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(cdir / f"{i:04d}.png")
        taken[y] = taken.get(y, 0) + 1
    counts = root / "counts.json"
    counts.write_text(json.dumps({c: 100 for c in data.class_names}))
    return root, counts


def test_hidden_files_and_folders_are_not_counted(tmp_path):
    root, _ = _digits_folder(tmp_path, 8, per_class=2, hidden=True)
    (root / "test" / ".ipynb_checkpoints").mkdir()  # a hidden class folder
    Image.new("L", (8, 8), 0).save(root / "test" / ".ipynb_checkpoints" / "x.png")
    paths, labels, names = scan_image_folder(root / "test")
    assert names == [str(c) for c in range(10)] and len(paths) == 20
    assert np.bincount(labels).tolist() == [2] * 10
    assert not any(part.startswith(".") for p in paths for part in p.relative_to(root).parts)


def test_16_bit_digits_audit_like_the_same_digits_at_8_bits(tmp_path, capsys):
    """The demo CNN on the same digits as 8-bit and as 16-bit PNGs (with hidden extras beside the 16-bit ones):
    the same figures through the real command line (16-bit files decoded as white gave 0 % clean accuracy)."""
    figures = []
    for bits in (8, 16):
        root, counts = _digits_folder(tmp_path / f"bits{bits}", bits, hidden=bits == 16)
        out = tmp_path / f"out{bits}"
        code, _, err = run_main(["audit", str(DEMO), "--dataset", "imagefolder", "--data-root", str(root),
                                 "--class-counts", str(counts), "--out", str(out), *TINY_AUDIT], capsys)
        assert code == 0, err
        res = json.loads((out / "results.json").read_text())
        figures.append(([(c["name"], c["n_eval"], c["clean_acc"], c["robust_acc"]) for c in res["per_class"]],
                        res["dataset"]["n_eval"]))
    assert figures[1] == figures[0]
    assert figures[0][1] == 20 and sum(c[2] for c in figures[0][0]) / 10 > 0.6  # 2 per class; a working model
