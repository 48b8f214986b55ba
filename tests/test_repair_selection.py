"""Checkpoint selection on images the input model has not seen (issue 27 item 3): a split carved from the
evaluation data, disjoint from the training images and from the points the audits report; or the user's
validation folder (--val-root / --val-split), refused when it holds training or evaluation images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import cli
from audit.config import AuditConfig
from audit.data import load_dataset
from reat_finetune import RepairConfig
from reat_finetune.errors import RepairError
from reat_finetune.selection import MIN_SELECTION_PER_CLASS, selection_size_warning
from support import DEMO
from tailaudit import run_repair
from test_repair import cheap_config


def test_selection_split_is_unseen_and_not_reported(tmp_path):
    """The demo's selection points: evaluation images (none equal to a training image), none of them among the
    points the before- or after-audit reports; the floor is taken on them."""
    run = run_repair(cheap_config(tmp_path / "r", epochs=None, steps_total=2, evaluations=1))
    split = run.summary["split"]
    sel = np.asarray(split["selection_indices"])
    assert split["selection_source"] == "evaluation" and len(sel) == split["n_val"] == 10  # 1 of each class's 5
    reported = {name: json.loads((run.out_dir / name / "points.json").read_text())["index"]
                for name in ("before", "after")}
    assert reported["before"] == reported["after"] and len(reported["after"]) == split["n_audit"] == 40
    assert not set(sel) & set(reported["after"])
    data = load_dataset("digitslt")
    train = {data.train[i][0].numpy().tobytes() for i in range(len(data.train))}
    assert not [i for i in sel if data.test[int(i)][0].numpy().tobytes() in train]
    floors = run.training_log["selection"]["floors"]
    assert floors["reference_source"] == "selection"
    assert floors["reference"] == run.training_log["epochs"][0]["val_clean_acc"]
    # 1 image per class is too few for the floor to mean anything: said, with what to do
    assert any("fewer than 10 images" in w and "--val-root" in w for w in run.summary["warnings"])


def test_selection_size_warning_threshold():
    names = [str(i) for i in range(3)]
    assert selection_size_warning([MIN_SELECTION_PER_CLASS] * 3, names, 0.8, "evaluation") is None
    w = selection_size_warning([12, 4, 0], names, 0.8, "val-root")
    assert "“1”: 4" in w and "--val-root folder" in w


def _digit_folder(root, images, labels):
    for k, (x, y) in enumerate(zip(images, labels)):
        d = root / str(int(y))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).convert("RGB").save(d / f"{k:04d}.png")


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    """train/, test/ and val/ folders of real PNGs from the digits data (val/ from test images beyond test/)."""
    root = tmp_path_factory.mktemp("digits")
    data = load_dataset("digitslt")
    tr = [data.train[i] for i in range(len(data.train))]
    te = [data.test[i] for i in range(len(data.test))]
    _digit_folder(root / "train", [x for x, _ in tr], [y for _, y in tr])
    _digit_folder(root / "test", [x for x, _ in te[::5]], [y for _, y in te[::5]])
    _digit_folder(root / "val", [x for x, _ in te[1::5]], [y for _, y in te[1::5]])
    return root


def _folder_config(root, **kw):
    audit = AuditConfig(model=str(DEMO), dataset="imagefolder", data_root=str(root), eps=0.1, attacks=("pgd",),
                        steps=3, quiet=True, device="cpu")
    return RepairConfig(audit=audit, formats=(), quiet=True, steps_total=2, evaluations=1, batch_size=64, **kw)


def test_val_root_refuses_training_images_and_is_used_otherwise(digit_folders, tmp_path, capsys):
    """--val-root on the training folder: one line, exit 2, before any audit; --val-split val selects there and
    the audits report every evaluation point."""
    code = cli.main(["repair", str(DEMO), "--dataset", "imagefolder", "--data-root", str(digit_folders),
                     "--val-root", str(digit_folders / "train"), "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds" in err[0] and "training images" in err[0], err
    assert not (tmp_path / "bad" / "before").exists()
    with pytest.raises(RepairError, match="evaluation images"):
        run_repair(_folder_config(digit_folders, val_root=str(digit_folders / "test"), out=str(tmp_path / "t")))
    run = run_repair(_folder_config(digit_folders, val_split="val", out=str(tmp_path / "ok")))
    split = run.summary["split"]
    assert split["selection_source"] == "val-root" and split["selection_root"].endswith("val")
    assert split["n_val"] == 100 and split["n_audit"] == 100 and split["selection_indices"] is None
    assert run.training_log["selection"]["validation"]["source"] == "val-root"
