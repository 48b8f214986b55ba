"""audit.data: long-tail profile, seeded selection, groups, loaders and the restricted unpickler.

Offline and deterministic: synthetic CIFAR folders are written to tmp_path; the real
CIFAR-10 test runs only when ../shared/data/cifar10-jpeg.zip exists.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.data import (
    LTDataset,
    assign_groups,
    groups_to_indices,
    load_dataset,
    load_pickle,
    longtail_counts,
    select_longtail,
    stratified_subset,
)
from audit.errors import ConfigError, DatasetError
from support import ROOT

# the shared folder sits beside the checkout (CI clones elsewhere, with ../shared beside it)
CIFAR10_ZIP = next((p for p in (ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip",
                                Path("/work/shared/data/cifar10-jpeg.zip")) if p.is_file()),
                   ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip")
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- helpers


def reference_selection(targets: np.ndarray, counts: list[int]) -> np.ndarray:
    """Independent re-implementation of the reference rule: seed 0, per class shuffle, keep first n_i."""
    rs = np.random.RandomState(0)  # same stream as np.random.seed(0) + np.random.shuffle
    out = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(np.asarray(targets) == c)
        rs.shuffle(idx)
        out.extend(idx[:n].tolist())
    return np.asarray(out, dtype=np.int64)


def encode_index(n: int) -> np.ndarray:
    """uint8 N x 3072 CIFAR rows whose first two bytes spell the row's global index."""
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(n) % 256
    data[:, 1] = np.arange(n) // 256
    data[:, 2:] = (np.arange(n)[:, None] * 7 + np.arange(3070)[None, :]) % 251
    return data


def decode_index(img: torch.Tensor) -> int:
    px = (img[0, 0, :2] * 255).round().to(torch.int64)
    return int(px[0] + 256 * px[1])


def write_pickle(path: Path, obj: object, legacy_numpy_names: bool) -> None:
    """Pickle like the official files; ``legacy_numpy_names`` mimics their numpy.core globals (protocol 2)."""
    if legacy_numpy_names:
        raw = pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    else:
        raw = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    path.write_bytes(raw)


def write_cifar10_batches(root: Path, per_class_train: int = 60, per_class_test: int = 20) -> np.ndarray:
    """Torchvision-layout CIFAR-10 (5 shuffled train batches, test_batch, batches.meta); returns train targets."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rs = np.random.RandomState(123)
    targets = rs.permutation(np.repeat(np.arange(10), per_class_train))
    data = encode_index(len(targets))
    for b, chunk in enumerate(np.array_split(np.arange(len(targets)), 5), start=1):
        entry = {"batch_label": f"training batch {b} of 5", "labels": targets[chunk].tolist(), "data": data[chunk]}
        write_pickle(folder / f"data_batch_{b}", entry, legacy_numpy_names=True)
    test_labels = rs.permutation(np.repeat(np.arange(10), per_class_test))
    write_pickle(folder / "test_batch", {"labels": test_labels.tolist(), "data": encode_index(len(test_labels))}, True)
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072}, True)
    return targets


def write_png_folder(folder: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8)) -> None:
    """``folder/<class>/NNNN.png``; pixel (0, 0) holds (file number, class number, 0)."""
    for ci, (name, n) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            arr = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
            arr[0, 0] = (k, ci, 0)
            Image.fromarray(arr).save(folder / name / f"{k:04d}.png")


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil(Evil):
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


# ---------------------------------------------------------------- profile and groups


@pytest.mark.parametrize(
    "rho, expected, total",
    [
        (0.1, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], 20431),
        (0.02, [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 13996),
        (0.01, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], 12406),
    ],
)
def test_cifar10_check_table(rho, expected, total):
    counts = longtail_counts(5000, 10, rho)
    assert counts == expected
    assert sum(counts) == total


def test_cifar100_profile():
    counts = longtail_counts(500, 100, 0.01)
    assert sum(counts) == 10847
    assert min(counts) == 5 and counts[-1] == 5 and counts[0] == 500
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("rho", [0, -0.1, 1.5, float("nan"), "abc", None])
def test_rho_out_of_range(rho):
    with pytest.raises(ConfigError, match="imbalance"):
        longtail_counts(5000, 10, rho)


def test_rho_one_is_balanced():
    assert longtail_counts(5000, 10, 1.0) == [5000] * 10


def test_select_longtail_matches_reference_and_keeps_global_rng():
    targets = np.random.RandomState(7).randint(0, 5, size=400)
    counts = [50, 30, 20, 10, 5]
    np.random.seed(99)
    before = np.random.get_state()
    sel = select_longtail(targets, counts, seed=0)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert np.array_equal(sel, reference_selection(targets, counts))
    assert np.bincount(targets[sel], minlength=5).tolist() == counts
    assert len(set(sel.tolist())) == len(sel)
    with pytest.raises(DatasetError, match="class 0"):
        select_longtail(targets, [10_000, 1, 1, 1, 1])


def test_groups_thirds_from_counts_not_index():
    counts = longtail_counts(5000, 10, 0.01)
    groups = assign_groups(counts)
    assert groups_to_indices(groups) == {"head": [0, 1, 2], "medium": [3, 4, 5, 6], "tail": [7, 8, 9]}
    shuffled = [50, 5000, 83, 2997, 645, 139, 1796, 1077, 387, 232]
    by_group = groups_to_indices(assign_groups(shuffled))
    assert by_group == {"head": [1, 3, 6], "medium": [4, 7, 8, 9], "tail": [0, 2, 5]}
    assert assign_groups([7] * 10) == ["head"] * 3 + ["medium"] * 4 + ["tail"] * 3  # ties: stable on index
    sizes = {g: len(v) for g, v in groups_to_indices(assign_groups(longtail_counts(500, 100, 0.01))).items()}
    assert sizes == {"head": 33, "medium": 34, "tail": 33}


def test_groups_shots_rule():
    counts = [124, 74, 44, 26, 16, 9, 5, 3, 2, 101, 100, 20, 19]
    groups = assign_groups(counts, rule="shots")
    assert groups == ["head", "medium", "medium", "medium", "tail", "tail", "tail", "tail", "tail",
                      "head", "medium", "medium", "tail"]
    with pytest.raises(ConfigError, match="group rule"):
        assign_groups(counts, rule="quartiles")


def test_stratified_subset():
    labels = np.repeat(np.arange(4), [10, 3, 8, 1])
    sub = stratified_subset(labels, 5, seed=1)
    assert np.all(np.diff(sub) > 0)
    assert np.bincount(labels[sub], minlength=4).tolist() == [5, 3, 5, 1]
    assert np.array_equal(sub, stratified_subset(labels, 5, seed=1))
    picks = {tuple(stratified_subset(labels, 5, seed=s).tolist()) for s in range(5)}
    assert len(picks) > 1  # the seed matters
    with pytest.raises(ConfigError):
        stratified_subset(labels, 0, seed=0)


# ---------------------------------------------------------------- CIFAR (synthetic)


def test_cifar10_torchvision_layout(tmp_path):
    targets = write_cifar10_batches(tmp_path)
    data = load_dataset("cifar10lt", imbalance=0.1, data_root=tmp_path, download=False)
    expected_counts = [int(60 * 0.1 ** (i / 9)) for i in range(10)]
    assert data.train_counts == expected_counts == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    assert data.class_names == CIFAR10_NAMES
    assert data.info["source"] == "torchvision" and data.image_shape == (3, 32, 32)
    expected = reference_selection(targets, expected_counts)
    assert np.array_equal(data.train_labels, targets[expected])
    got = [decode_index(data.train[i][0]) for i in range(len(data.train))]
    assert got == expected.tolist()  # the very images the reference rule picks, in class order
    assert len(data.test) == 200 and np.bincount(data.test_labels).tolist() == [20] * 10
    img, label = data.test[3]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32) and isinstance(label, int)
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert decode_index(img) == 3 and label == int(data.test_labels[3])
    json.dumps(data.info)
    json.dumps(data.describe())


def test_cifar100_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rs = np.random.RandomState(5)
    targets = rs.permutation(np.repeat(np.arange(100), 20))
    names = [f"class{c:03d}" for c in range(100)]
    write_pickle(folder / "train", {"fine_labels": targets.tolist(), "coarse_labels": (targets // 5).tolist(),
                                    "data": encode_index(len(targets))}, legacy_numpy_names=False)
    test_labels = np.repeat(np.arange(100), 2)
    write_pickle(folder / "test", {"fine_labels": test_labels.tolist(), "data": encode_index(200)}, False)
    write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20}, False)
    data = load_dataset("cifar100lt", imbalance=0.1, data_root=tmp_path, download=False)
    counts = longtail_counts(20, 100, 0.1)
    assert data.train_counts == counts and counts[-1] == 2
    assert data.class_names == names and len(data.test) == 200
    expected = reference_selection(targets, counts)
    assert [decode_index(data.train[i][0]) for i in range(0, len(data.train), 37)] == expected[::37].tolist()
    assert np.array_equal(data.train_labels, targets[expected])
    assert assign_groups(data.train_counts)[:33] == ["head"] * 33


def test_cifar_class_counts_give_the_models_real_training_counts(tmp_path):
    """--class-counts on a CIFAR dataset: groups follow the model's real counts, the tool's own long-tailed
    training split (what a repair fine-tunes on) stays as --imbalance builds it, and the source is recorded."""
    write_cifar10_batches(tmp_path)
    real = {name: 5000 if i % 2 else 50 for i, name in enumerate(CIFAR10_NAMES)}  # not the tool's profile
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps(real))
    data = load_dataset("cifar10lt", imbalance=0.1, data_root=tmp_path, class_counts=counts, download=False)
    assert data.train_counts == [real[n] for n in CIFAR10_NAMES]
    assert data.info["profile"] == "given" and data.info["counts_source"] == str(counts)
    assert (data.info["sampled_counts"] == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
            == np.bincount(data.train_labels).tolist())
    counts.write_text(json.dumps([1, 2]))
    with pytest.raises(DatasetError, match="list 2 counts for 10 class"):
        load_dataset("cifar10lt", data_root=tmp_path, class_counts=counts, download=False)


def test_cifar10_imagefolder_layout(tmp_path):
    per_class = {name: 30 for name in CIFAR10_NAMES}
    write_png_folder(tmp_path / "train", per_class, size=(32, 32))
    write_png_folder(tmp_path / "test", {name: 3 for name in CIFAR10_NAMES}, size=(32, 32))
    data = load_dataset("cifar10lt", imbalance=0.1, data_root=tmp_path, download=False)
    counts = [int(30 * 0.1 ** (i / 9)) for i in range(10)]
    assert data.train_counts == counts and data.info["source"] == "imagefolder"
    targets = np.repeat(np.arange(10), 30)  # class order, then file-name order
    expected = reference_selection(targets, counts)
    assert [p.name for p in data.train.paths] == [f"{i % 30:04d}.png" for i in expected]
    assert np.array_equal(data.train_labels, targets[expected])
    img, label = data.train[5]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert round(float(img[0, 0, 0]) * 255) == expected[5] % 30 and round(float(img[1, 0, 0]) * 255) == label == 0
    assert np.bincount(data.test_labels).tolist() == [3] * 10


@pytest.mark.parametrize("evil_cls", [Evil, EvalEvil])
def test_restricted_unpickler_blocks_code(tmp_path, evil_cls):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    bad = {"labels": [0], "data": evil_cls(marker)}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DatasetError, match="not allowed"):
        load_dataset("cifar10lt", data_root=tmp_path, download=False)
    with pytest.raises(DatasetError, match="refusing to load"):
        load_pickle(folder / "data_batch_1")
    assert not marker.exists()


def test_python2_style_batch(tmp_path):
    """The official files are Python 2 pickles: raw bytes as py2 str, numpy.core globals."""

    def s(b: bytes) -> bytes:  # py2 str opcode (SHORT_BINSTRING / BINSTRING)
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b

    data = (np.arange(2 * 3072) % 256).astype(np.uint8)
    raw = (b"\x80\x02}(" + s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
           + b"\x87R(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
           + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data.tobytes()) + b"tb"
           + s(b"labels") + b"](K\x01K\x02eu.")
    (tmp_path / "batch").write_bytes(raw)
    entry = load_pickle(tmp_path / "batch")
    assert entry["labels"] == [1, 2] and entry["data"].dtype == np.uint8
    assert np.array_equal(entry["data"], data.reshape(2, 3072))


def test_cifar_bad_batch_shape(tmp_path):
    write_cifar10_batches(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
                 {"labels": [1, 2], "data": np.zeros((2, 10), np.uint8)}, False)
    with pytest.raises(DatasetError, match="expected uint8 N x 3072"):
        load_dataset("cifar10lt", data_root=tmp_path, download=False)


def test_cifar_missing_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10lt", download=False)
    msg = str(err.value)
    assert "CIFAR-10 not found under" in msg and str(tmp_path / "home") in msg and "--data-root" in msg
    assert "cifar-10-batches-py/" in msg and "train/<class>/" in msg
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10lt", data_root=tmp_path / "nope", download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="CIFAR-100 not found under .*cifar-100-python/"):
        load_dataset("cifar100lt", data_root=tmp_path / "empty", download=False)


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match="cifar10lt.*digitslt.*imagefolder"):
        load_dataset("mnist")


# ---------------------------------------------------------------- digitslt


def test_digitslt():
    np.random.seed(4)
    expected_next = np.random.RandomState(4).rand()
    data = load_dataset("digitslt", imbalance=0.01)
    assert np.random.rand() == expected_next  # no global RNG side effect
    assert isinstance(data, LTDataset) and data.image_shape == (1, 8, 8)
    assert data.class_names == [str(c) for c in range(10)]
    assert data.info["train_pool_counts"] == [n - 50 for n in [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]]
    n_max = min(data.info["train_pool_counts"])
    assert n_max == 124
    assert (data.train_counts == [int(n_max * 0.01 ** (i / 9)) for i in range(10)]
            == [124, 74, 44, 26, 16, 9, 5, 3, 2, 1])
    assert np.bincount(data.train_labels, minlength=10).tolist() == data.train_counts
    assert len(data.test) == 500 and np.bincount(data.test_labels).tolist() == [50] * 10
    test_x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    train_x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert test_x.shape == (500, 1, 8, 8) and test_x.dtype == torch.float32
    assert float(test_x.min()) == 0.0 and float(test_x.max()) == 1.0 and float(train_x.max()) <= 1.0
    assert [data.test[i][1] for i in range(5)] == data.test_labels[:5].tolist()
    train_bytes = {x.numpy().tobytes() for x in train_x}
    assert not any(x.numpy().tobytes() in train_bytes for x in test_x)  # train and test are disjoint
    again = load_dataset("digitslt", imbalance=0.01)
    assert np.array_equal(again.train_labels, data.train_labels) and torch.equal(again.test[7][0], data.test[7][0])
    desc = data.describe()
    assert desc["groups"] == ["head"] * 3 + ["medium"] * 4 + ["tail"] * 3
    assert desc["test_counts"] == [50] * 10 and desc["train_counts"] == data.train_counts
    json.dumps(desc)
    assert load_dataset("digitslt", imbalance=0.1).train_counts == [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_train_and_test(tmp_path):
    write_png_folder(tmp_path / "train", {"ant": 2, "bee": 6, "cat": 1})
    write_png_folder(tmp_path / "test", {"ant": 2, "bee": 2, "cat": 2})
    Image.fromarray(np.zeros((12, 10), np.uint8), mode="L").save(tmp_path / "test" / "cat" / "0009.PNG")
    (tmp_path / "test" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", data_root=tmp_path)
    assert data.class_names == ["ant", "bee", "cat"]
    assert data.train_counts == [2, 6, 1]
    assert assign_groups(data.train_counts) == ["medium", "head", "tail"]
    assert data.image_shape == (3, 8, 8) and len(data.test) == 7
    assert data.test_labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert data.info["resized"]["test"] == 1 and data.info["source"] == "imagefolder"
    img, label = data.test[6]  # the grayscale 10x12 one: RGB, resized to 8x8
    assert img.shape == (3, 8, 8) and label == 2 and float(img.max()) == 0.0
    img, label = data.test[2]
    assert round(float(img[1, 0, 0]) * 255) == 1 == label and abs(float(img[0, 4, 4]) - 128 / 255) < 1e-6
    assert len(data.train) == 9 and data.train_labels.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2]
    json.dumps(data.info)


def test_imagefolder_eval_only_with_counts(tmp_path):
    write_png_folder(tmp_path / "val", {"b": 2, "a": 3})
    counts_file = tmp_path / "counts.json"
    counts_file.write_text(json.dumps({"b": 10, "a": 500}))
    data = load_dataset("imagefolder", data_root=tmp_path, class_counts=counts_file)
    assert data.class_names == ["a", "b"] and data.train_counts == [500, 10]
    assert data.train is None and data.train_labels is None
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1] and data.info["imbalance"] == pytest.approx(0.02)
    counts_file.write_text("[7, 3]")
    assert load_dataset("imagefolder", data_root=tmp_path / "val", class_counts=counts_file).train_counts == [7, 3]
    with pytest.raises(DatasetError, match="--class-counts"):
        load_dataset("imagefolder", data_root=tmp_path)
    counts_file.write_text(json.dumps({"a": 1, "c": 2}))
    with pytest.raises(DatasetError, match="missing: b; unknown: c"):
        load_dataset("imagefolder", data_root=tmp_path, class_counts=counts_file)
    counts_file.write_text("[1, 2, 3]")
    with pytest.raises(DatasetError, match="3 counts for 2 class folders"):
        load_dataset("imagefolder", data_root=tmp_path, class_counts=counts_file)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", data_root=tmp_path, class_counts=tmp_path / "missing.json")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs your data"):
        load_dataset("imagefolder")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", data_root=tmp_path / "nope")
    write_png_folder(tmp_path / "train", {"a": 2, "b": 1})
    with pytest.raises(DatasetError, match="no test/ or val/"):
        load_dataset("imagefolder", data_root=tmp_path)
    write_png_folder(tmp_path / "test", {"a": 1, "b": 1})
    (tmp_path / "test" / "b" / "0001.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DatasetError, match="cannot read image .*0001.jpg"):
        load_dataset("imagefolder", data_root=tmp_path)
    (tmp_path / "test" / "b" / "0001.jpg").unlink()
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(DatasetError, match="class folders not in the training classes: c"):
        load_dataset("imagefolder", data_root=tmp_path)
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        load_dataset("imagefolder", data_root=tmp_path)


# ---------------------------------------------------------------- real CIFAR-10 and the demo model


@pytest.fixture(scope="session")
def cifar10_jpeg_root() -> Path:
    """The shared CIFAR-10 JPEGs, unzipped once into the git-ignored .cache/cifar10."""
    if not CIFAR10_ZIP.is_file():
        pytest.skip(f"{CIFAR10_ZIP} is absent; the real CIFAR-10 check needs it")
    root = ROOT / ".cache" / "cifar10"
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        tmp = root.with_name(f"cifar10.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(CIFAR10_ZIP) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def test_real_cifar10_jpeg(cifar10_jpeg_root):
    data = load_dataset("cifar10lt", imbalance=0.01, data_root=cifar10_jpeg_root, download=False)
    assert data.class_names == CIFAR10_NAMES
    assert len(data.test) == 10000 and np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.info["train_pool_counts"] == [5000] * 10
    assert data.train_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert np.bincount(data.train_labels).tolist() == data.train_counts and len(data.train) == 12406
    img, label = data.test[9999]
    assert img.shape == (3, 32, 32) and label == 9 and 0.0 <= float(img.min()) <= float(img.max()) <= 1.0
    assert float(img.std()) > 0.01  # a real picture, not a blank


def test_demo_onnx_model():
    ort = pytest.importorskip("onnxruntime")
    path = ROOT / "examples" / "digits_cnn.onnx"
    assert path.stat().st_size < 1_000_000
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and out.name == "logits" and inp.shape[1:] == [1, 8, 8]
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    data = load_dataset("digitslt", imbalance=0.01)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))]).numpy()
    logits = sess.run(["logits"], {"input": x})[0]
    assert logits.shape == (500, 10)
    pred = logits.argmax(1)
    assert np.array_equal(sess.run(["logits"], {"input": x[:1]})[0].argmax(1), pred[:1])
    acc = float((pred == data.test_labels).mean())
    assert acc > 0.7
    per_class = [float((pred[data.test_labels == c] == c).mean()) for c in range(10)]
    assert np.mean(per_class[:3]) > np.mean(per_class[-3:])  # the tail is weaker: the point of the demo
