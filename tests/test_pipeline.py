"""The Python API on user data: an image folder whose images need resizing and a channel change."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tailaudit import AuditConfig, run_audit
from audit.errors import ModelLoadError
from support import DEMO



def _image_folder(root: Path, counts: list[int], n_test: int = 3, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", counts), ("test", [n_test] * len(counts))):
        for c, n in enumerate(per_class):
            d = root / split / f"class_{c:02d}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_imagefolder_resized_to_model_input(tmp_path):
    counts = [20, 15, 11, 8, 6, 5, 4, 3, 2, 1]
    root = _image_folder(tmp_path / "data", counts)
    run = run_audit(AuditConfig(model=str(DEMO), dataset="imagefolder", data_root=str(root), steps=3,
                                out=str(tmp_path / "out"), quiet=True, seed=1, force=True))  # random images: --force
    res = json.loads(run.results_path.read_text())
    assert res["dataset"]["train_counts"] == counts
    assert res["dataset"]["classes"][0] == "class_00"
    assert res["model"]["preprocessing"]["input_size"] == [1, 8, 8]
    assert res["dataset"]["n_eval"] == 30
    assert [c["group"] for c in res["per_class"]][:3] == ["head"] * 3
    pts = json.loads((run.out_dir / "points.json").read_text())
    assert sorted(pts["index"]) == list(range(30))


def test_timm_checkpoint_wrapped_and_prefixed(tmp_path):
    """A timm checkpoint saved as {'state_dict': {'module.…': …}} loads; normalisation comes from its config."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "epoch": 3}, ckpt)
    run = run_audit(AuditConfig(model="timm:test_resnet", checkpoint=str(ckpt), dataset="digitslt", n_per_class=2,
                                steps=2, out=str(tmp_path / "out"), quiet=True, force=True))  # untrained weights
    m = run.results.model
    assert m.format == "timm" and m.arch == "test_resnet" and len(m.sha256) == 64
    assert m.preprocessing.mean == list(net.pretrained_cfg["mean"])
    assert m.preprocessing.input_size == [3, 8, 8]  # the data's native size, since the CNN runs at it
    # the per-class weight norms come from timm's linear classifier
    w = net.get_classifier().weight.detach().norm(dim=1)
    assert [c.weight_norm for c in run.results.per_class] == pytest.approx(w.tolist(), rel=1e-5)


def test_pickled_object_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, ckpt)
    with pytest.raises(ModelLoadError, match="will not be unpickled"):
        run_audit(AuditConfig(model="timm:test_resnet", checkpoint=str(ckpt), out=str(tmp_path / "o"), quiet=True))
    assert not (tmp_path / "o").exists()
