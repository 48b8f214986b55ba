"""The corruption audit on real CIFAR-10 JPEGs, recomputed independently: the same points corrupted with the
package and the documented seeding rule outside tailaudit, classified, and compared class by class."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import tailaudit
from test_data import CIFAR10_NAMES, cifar10_jpeg_root  # noqa: F401 (the session fixture)

imagecorruptions = pytest.importorskip("imagecorruptions")

SEED = 11
SEVERITIES = (1, 5)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _class_mean_classifier(root) -> torch.nn.Module:
    """Nearest class mean over 40 training images a class, as a linear layer (logits = 2 x·m - |m|²)."""
    means = []
    for name in CIFAR10_NAMES:
        files = sorted((root / "train" / name).glob("*.jpg"))[:40]
        means.append(np.mean([_pixels(f).transpose(2, 0, 1).reshape(-1) / 255.0 for f in files], axis=0))
    m = torch.tensor(np.stack(means), dtype=torch.float32)
    lin = torch.nn.Linear(m.shape[1], 10)
    with torch.no_grad():
        lin.weight.copy_(2 * m)
        lin.bias.copy_(-(m * m).sum(1))
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


def _corrupt(img: np.ndarray, name: str, severity: int, index: int) -> np.ndarray:
    """The documented rule (docs/corruptions.md): one SeedSequence of (seed, corruption number, severity,
    test-set index) seeds NumPy's global generator and, for impulse noise and glass blur, the ``seed`` argument."""
    number = imagecorruptions.get_corruption_names("all").index(name)
    words = np.random.SeedSequence([SEED, number, severity, index]).generate_state(4, np.uint32)
    np.random.seed(words)
    kwargs = {"seed": int(words[0])} if name in ("impulse_noise", "glass_blur") else {}
    with np.errstate(invalid="raise"):
        try:
            return imagecorruptions.corrupt(img, severity=severity, corruption_name=name, **kwargs)
        except FloatingPointError:  # spatter without a drop on the image: 0/0, the package's black image
            assert name == "spatter"
            return img


@pytest.mark.slow
def test_all_corruptions_match_an_independent_recomputation(cifar10_jpeg_root, tmp_path, monkeypatch):  # noqa: F811
    import cv2
    from imagecorruptions import corruptions as package_module

    root = cifar10_jpeg_root
    net = _class_mean_classifier(root)
    config = tailaudit.AuditConfig(model=net, dataset="cifar10lt", data_root=str(root), download=False,
                                   n_per_class=2, attacks=("pgd",), steps=1, calibration_steps=0, seed=SEED,
                                   batch_size=7, quiet=True, out=str(tmp_path / "run"),
                                   force=True)  # a weak classifier (about 25% clean) on purpose: cheap to build
    run = tailaudit.run_audit(config, corruptions="all", severities=SEVERITIES)
    saved = json.loads(run.results_path.read_text())
    assert saved["summary"]["corruptions"]["names"] == imagecorruptions.get_corruption_names("all")

    monkeypatch.setattr(package_module, "cv2", cv2)  # the package as shipped (tailaudit caches frost's file reads)
    files = [f for name in CIFAR10_NAMES for f in sorted((root / "test" / name).glob("*.jpg"))]
    index = np.asarray(run.records.index)
    labels = np.array([CIFAR10_NAMES.index(files[j].parent.name) for j in index])
    assert np.array_equal(labels, run.records.label)
    clean = [_pixels(files[j]) for j in index]
    changed = 0
    for name in imagecorruptions.get_corruption_names("all"):
        for sev in SEVERITIES:
            x = np.stack([_corrupt(img, name, sev, int(j)) for img, j in zip(clean, index)])
            with torch.no_grad():
                pred = net(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255)).argmax(1).numpy()
            changed += int((pred != run.records.clean_pred).sum())
            for c in range(10):
                mine = labels == c
                expect = float((pred[mine] == c).mean())
                got = saved["per_class"][c]["corruptions"][name][str(sev)]["accuracy"]
                assert got == expect, (name, sev, c)
    assert changed > 0  # the corruptions moved some answers: the comparison can fail
