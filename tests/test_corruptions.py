"""The corruption audit (audit/corruptions/, docs/corruptions.md): the package vetted, seeding per point,
released-file readers, figures invariant to batching and sharding, flags refused with one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.corruptions import ALL, COMMON, HELD_OUT, parse_corruptions, parse_severities
from audit.corruptions.evaluate import class_figures, corruption_pass, join_records, summary_figures
from audit.corruptions.generate import corrupt_tensor, corrupt_uint8, point_state
from audit.corruptions.official import official_points
from audit.corruptions.points import GeneratedPoints
from audit.contract.files import json_text
from audit.contract.schema import load_results
from audit.run.engine import Evaluator
from audit.errors import ConfigError, DatasetError
from support import DEMO, TINY_AUDIT, run_main

imagecorruptions = pytest.importorskip("imagecorruptions")


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Smooth random pictures (a blurred noise field per channel), uint8 N×side×side×3."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, side // 4, side // 4, 3))
    return (np.kron(base, np.ones((1, 4, 4, 1))) * 255).astype(np.uint8)


class _Stack(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        self.y = labels

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def test_registry_and_flags():
    assert len(COMMON) == 15 and HELD_OUT == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert list(COMMON) == imagecorruptions.get_corruption_names("common")  # the package's names and order
    assert list(ALL) == imagecorruptions.get_corruption_names("all")
    assert parse_corruptions("common") == COMMON and parse_corruptions("all") == ALL
    assert parse_corruptions("fog, gaussian_noise") == ("gaussian_noise", "fog")  # registry order
    assert parse_severities("all") == (1, 2, 3, 4, 5) and parse_severities("5,1") == (1, 5)
    for bad in ("fgo", ",", "common,blur"):
        with pytest.raises(ConfigError, match="--corruptions"):
            parse_corruptions(bad)
    for bad in ("0", "6", "two"):
        with pytest.raises(ConfigError, match="--severity"):
            parse_severities(bad)


def test_every_corruption_at_severity_one_on_32px_images():
    """All 19 run on 32×32 pictures: right shape and type, the same image twice, a changed image."""
    imgs = _images(3, 32)
    for name in ALL:
        changed = 0
        for i, img in enumerate(imgs):
            out = corrupt_uint8(img, name, 1, seed=7, index=i)
            assert out.shape == img.shape and out.dtype == np.uint8, name
            assert np.array_equal(out, corrupt_uint8(img, name, 1, seed=7, index=i)), name
            changed += not np.array_equal(out, img)
        assert changed >= 2, name  # spatter may leave one image without a drop (see below)


def test_seeding_is_per_point_and_leaves_the_global_generator_alone():
    img = _images(1, 32)[0]
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "frost", "fog", "motion_blur"):
        np.random.seed(123)
        a = corrupt_uint8(img, name, 3, seed=1, index=5)
        after = np.random.random()
        np.random.seed(999)  # another global state: the same image
        b = corrupt_uint8(img, name, 3, seed=1, index=5)
        np.random.seed(123)
        assert np.random.random() == after  # restored around the call
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, corrupt_uint8(img, name, 3, seed=1, index=6)), name  # another point
        assert not np.array_equal(a, corrupt_uint8(img, name, 3, seed=2, index=5)), name  # another seed
    # the seed words depend on the four coordinates only
    assert np.array_equal(point_state(0, "fog", 2, 10), point_state(0, "fog", 2, 10))
    assert not np.array_equal(point_state(0, "fog", 2, 10), point_state(0, "fog", 3, 10))


def test_eight_pixel_grey_images_are_upsampled_corrupted_and_resized_back():
    x = torch.from_numpy(_images(1, 8)[0, :, :, :1].transpose(2, 0, 1).astype(np.float32) / 255)
    for name in ("gaussian_noise", "pixelate", "zoom_blur", "frost"):
        y = corrupt_tensor(x, name, 5, seed=0, index=0)
        assert y.shape == (1, 8, 8) and y.dtype == torch.float32 and 0 <= float(y.min()) <= float(y.max()) <= 1
        assert torch.equal(y, corrupt_tensor(x, name, 5, seed=0, index=0))
        assert not torch.equal(y, x)


def _evaluator() -> Evaluator:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 30 * 30, 3)).eval()
    return Evaluator(net, 3, (3, 32, 32), torch.device("cpu"))


def test_figures_do_not_depend_on_batch_size_order_or_shards():
    imgs, labels = _images(12, 32, seed=1), np.arange(12) % 3
    data = _Stack(imgs, labels)
    jobs = [("gaussian_noise", 2), ("glass_blur", 1), ("fog", 4)]
    ev, idx = _evaluator(), np.arange(12)

    def run(indices: np.ndarray, batch: int, shuffle: bool = False, workers: int = 0):
        pts = GeneratedPoints(data, indices, jobs, (3, 32, 32), seed=3)
        order = torch.utils.data.DataLoader(pts, batch_size=batch, shuffle=shuffle, num_workers=workers,
                                            generator=torch.Generator().manual_seed(0))
        return corruption_pass(ev, order, jobs, indices)

    whole = run(idx, 256)
    for other in (run(idx, 7), run(idx, 5, shuffle=True), join_records([run(idx[:5], 7), run(idx[5:], 3)]),
                  run(idx, 4, workers=2)):  # two DataLoader worker processes make the images
        assert np.array_equal(other.index, whole.index) and np.array_equal(other.pred, whole.pred)
        np.testing.assert_allclose(other.conf, whole.conf, rtol=0, atol=1e-6)
    clean = np.ones(12, bool)
    per_class = class_figures(whole, labels, clean, 3)
    acc = (whole.pred[0][labels == 1] == 1).mean()
    assert per_class[1]["gaussian_noise"]["2"]["accuracy"] == pytest.approx(acc)
    assert per_class[1]["gaussian_noise"]["2"]["drop"] == pytest.approx(1 - acc)
    summ = summary_figures(whole, labels, clean, 3, {})
    fog = summ["per_corruption"]["fog"]
    assert fog["mean_accuracy"] == pytest.approx((whole.pred[2] == labels).mean())
    assert fog["relative_error"] == pytest.approx(1 - fog["mean_accuracy"])
    means = [summ["per_corruption"][n]["mean_accuracy"] for n in ("gaussian_noise", "glass_blur", "fog")]
    assert summ["mean_accuracy"] == pytest.approx(np.mean(means))


def _official_files(root, imgs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Tiny files in the released CIFAR-10-C layout: <name>.npy = 5 severities × N images, labels.npy."""
    n = len(labels)
    stored = {}
    for k, name in enumerate(names):
        arr = np.stack([np.roll(imgs, s + k, axis=2) for s in range(5)]).reshape(5 * n, *imgs.shape[1:])
        np.save(root / f"{name}.npy", arr.astype(np.uint8))
        stored[name] = arr
    np.save(root / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    return stored


def test_released_npy_files_are_read_row_by_severity(tmp_path):
    imgs, labels = _images(6, 32, seed=2), np.array([0, 1, 2, 0, 1, 2])
    stored = _official_files(tmp_path, imgs, labels, ["fog", "snow"])
    data, idx = _Stack(imgs, labels), np.array([1, 4, 5])
    pts = official_points(tmp_path, data, labels, idx, [("fog", 1), ("snow", 3)], (3, 32, 32))
    x, _, index, job = pts[4]  # job 1 (snow, severity 3), point 1 (test index 4)
    assert (index, job) == (4, 1)
    expect = stored["snow"][2 * 6 + 4]
    assert np.array_equal((x.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), expect)
    with pytest.raises(DatasetError, match="speckle_noise.npy is missing"):
        official_points(tmp_path, data, labels, idx, [("speckle_noise", 1)], (3, 32, 32))
    with pytest.raises(DatasetError, match="does not match the dataset's test labels"):
        official_points(tmp_path, data, labels[::-1].copy(), idx, [("fog", 1)], (3, 32, 32))
    with pytest.raises(DatasetError, match="expected 5 × 7"):
        official_points(tmp_path, _Stack(_images(7, 32), np.zeros(7, int)), np.zeros(7, int), idx, [("fog", 1)],
                        (3, 32, 32))


def test_cli_refuses_bad_corruption_flags_with_one_line(capsys, tmp_path):
    code, _, err = run_main(["audit", str(DEMO), "--corruptions", "blurry", *TINY_AUDIT, "--out", str(tmp_path / "a")],
                            capsys)
    assert code == 2 and "unknown corruption 'blurry'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["audit", str(DEMO), "--corruptions", "fog", "--corruption-root", str(tmp_path / "none"),
                             *TINY_AUDIT, "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "is not a folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "results.json").exists()


def test_spatter_without_drops_returns_the_image_not_a_black_one():
    """The package's spatter (severities 1-3) divides by its drop mask's maximum; when the random liquid layer
    leaves no drop on the image that is 0/0 and the package returns an all-black image (3 of 100 CIFAR-10 images at
    severity 1). Those points get the image unchanged; the others the package's own output."""
    img = _images(1, 32, seed=4)[0]
    unchanged = 0
    for i in range(150):
        out = corrupt_uint8(img, "spatter", 1, seed=0, index=i)
        assert out.max() > 0
        if np.array_equal(out, img):
            unchanged += 1
            np.random.seed(point_state(0, "spatter", 1, i))
            with np.errstate(invalid="ignore"):
                assert imagecorruptions.corrupt(img, 1, "spatter").max() == 0  # the package's black image
    assert unchanged > 0


def test_digits_demo_is_upsampled_and_exported(capsys, caplog, tmp_path):
    """The 8×8 digits demo: every corruption runs on 32-px upsampled images (one log line says so), and the figures
    reach results.json (checked against the schema when written), per_class.csv and summary.md."""
    import json

    out = tmp_path / "d"
    code, printed, err = run_main(["audit", str(DEMO), "--corruptions", "fog,jpeg_compression", "--severity", "1",
                                   *TINY_AUDIT, "--out", str(out)], capsys)
    assert code == 0, err
    assert "corruptions (2, severities 1, ImageNet-C parameters): mean accuracy" in printed
    said = [r.getMessage() for r in caplog.records if "upsampled (bilinear) to 32×32" in r.getMessage()]
    assert len(said) == 1 and "8×8" in said[0]
    r = json.loads((out / "results.json").read_text())
    c = r["summary"]["corruptions"]
    assert c["input_side"] == [8, 8] and c["generated_side"] == [32, 32] and c["parameters"] == "ImageNet-C"
    assert c["names"] == ["fog", "jpeg_compression"] and c["severities"] == [1] and c["images"] == 2 * 20
    cell = r["per_class"][0]["corruptions"]["fog"]["1"]
    assert cell["ci95"][0] <= cell["accuracy"] <= cell["ci95"][1]
    assert cell["drop"] == pytest.approx(r["per_class"][0]["clean_acc"] - cell["accuracy"])
    typed = load_results(out / "results.json")  # the typed figures, fields in the writer's order
    assert typed.summary.corruptions.per_corruption["fog"].severities["1"].ci95 == \
        r["summary"]["corruptions"]["per_corruption"]["fog"]["severities"]["1"]["ci95"]
    assert typed.per_class[0].corruptions["fog"].severities["1"].drop == cell["drop"]
    assert json_text(typed.to_json()) == (out / "results.json").read_text().rstrip("\n")  # read, written: same text
    header = (out / "per_class.csv").read_text().splitlines()[0]
    assert header.endswith("corruption_fog,corruption_jpeg_compression")
    assert "| jpeg\\_compression |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_two_torchrun_shards_give_the_same_corruption_figures(tmp_path, capsys):
    """Each rank corrupts and scores its own block of points; rank 0 joins them: the figures of a plain run."""
    import json

    from test_distributed import torchrun

    args = ["--corruptions", "glass_blur,spatter,fog", "--severity", "1,4", "--attacks", "pgd",
            "--calibration-steps", "0", "--seed", "5", "--batch-size", "8", "--device", "cpu", *TINY_AUDIT]
    one, two = tmp_path / "one", tmp_path / "two"
    code, _, err = run_main(["audit", str(DEMO), *args, "--out", str(one)], capsys)
    assert code == 0, err
    proc = torchrun("audit", str(DEMO), *args, "--out", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert b["environment"]["world_size"] == 2
    assert [r["corruptions"] for r in a["per_class"]] == [r["corruptions"] for r in b["per_class"]]
    for s in (a, b):
        s["summary"]["corruptions"].pop("seconds")
    assert a["summary"]["corruptions"] == b["summary"]["corruptions"]


def test_imagenet_c_folders_mirror_the_evaluation_folder(tmp_path):
    """ImageNet-C's <root>/<name>/<severity>/<class>/<file>: the corrupted twin of each audited image is read."""
    from PIL import Image

    from audit.data.core import ImageFileDataset

    imgs = _images(4, 32, seed=3)
    paths, labels = [], []
    for i, img in enumerate(imgs):
        cls = ["cat", "dog"][i % 2]
        p = tmp_path / "test" / cls / f"{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p)
        paths.append(p)
        labels.append(i % 2)
        twin = tmp_path / "c" / "fog" / "2" / cls / f"{i:04d}.png"
        twin.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - img).save(twin)
    base = ImageFileDataset(paths, labels, size=(32, 32))
    pts = official_points(tmp_path / "c", base, np.array(labels), np.arange(4), [("fog", 2)], (3, 32, 32))
    x, _, index, job = pts[3]
    assert (index, job) == (3, 0)
    assert np.array_equal((x.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), 255 - imgs[3])
    with pytest.raises(DatasetError, match=r"is missing \(4 of 4 at fog severity 3\); ImageNet-C's layout"):
        official_points(tmp_path / "c", base, np.array(labels), np.arange(4), [("fog", 3)], (3, 32, 32))
    with pytest.raises(DatasetError, match="needs an image-folder dataset"):
        official_points(tmp_path / "c", _Stack(imgs, np.array(labels)), np.array(labels), np.arange(4),
                        [("fog", 2)], (3, 32, 32))


def test_schema_takes_corruption_figures_and_refuses_impossible_ones():
    from audit.errors import ResultsError
    from audit.contract.schema import validate_results
    from report_fixtures import make_results
    from test_corruption_report import with_corruptions

    results = with_corruptions(make_results(10), tail_hit=0.2)
    validate_results(results)
    bad = json_copy(results)
    bad["per_class"][2]["corruptions"]["fog"]["1"]["accuracy"] = 1.5
    with pytest.raises(ResultsError, match="corruptions"):
        validate_results(bad)
    bad = json_copy(results)
    bad["summary"]["corruptions"]["severities"] = [0]
    with pytest.raises(ResultsError, match="severities"):
        validate_results(bad)


def json_copy(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))
