"""Scaling out: sharded audits and DDP repair under torchrun (CPU, gloo, two processes), --workers.

The two-process runs go through ``python -m torch.distributed.run`` in a subprocess (the
launcher is what users run); everything else runs in-process.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
from tailaudit import AuditConfig, run_audit
from audit.run.distributed import shard_bounds
from audit.run.records import PointRecords
from audit.run.merge import concat_records
from support import DEMO, ROOT

pytestmark = pytest.mark.slow  # the end-to-end tier (conftest.py)

AUDIT_ARGS = ["--dataset", "digitslt", "--n-per-class", "7", "--eps", "0.1", "--steps", "4", "--seed", "3",
              "--batch-size", "16", "--no-html", "--no-pdf", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TAILAUDIT_DIST_TIMEOUT="120")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(ROOT / "cli.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _comparable(results: dict) -> dict:
    d = {k: v for k, v in results.items() if k not in ("created", "timings", "environment")}
    d["config"] = {k: v for k, v in d["config"].items() if k not in ("out", "quiet", "workers")}
    return d


def _confidences_apart(node, path: str = "$") -> tuple[object, list[tuple[str, float]]]:
    """(``node`` with every figure made of softmax confidences taken out, those figures by path).

    Predictions, counts and accuracies are exact whatever the batches; a confidence is a float32 softmax
    value whose last bits depend on the batch it was computed in (the last batch of a shard is smaller than
    a one-process run's), so those figures are compared to float rounding instead."""
    taken: list[tuple[str, float]] = []

    def walk(n, p, inside):
        if isinstance(n, dict):
            out = {}
            for k, v in n.items():
                sub = inside or k in ("calibration", "clean_conf", "attacked_conf")
                kept = walk(v, f"{p}.{k}", sub)
                if kept is not None:
                    out[k] = kept
            return out
        if isinstance(n, list):
            return [walk(v, f"{p}[{i}]", inside) for i, v in enumerate(n)]
        if inside and isinstance(n, float):
            taken.append((p, n))
            return None
        return n

    return walk(node, path, False), taken


def assert_same_up_to_confidences(a, b) -> None:
    (rest_a, conf_a), (rest_b, conf_b) = _confidences_apart(a), _confidences_apart(b)
    assert rest_a == rest_b
    assert [p for p, _ in conf_a] == [p for p, _ in conf_b]
    assert [v for _, v in conf_a] == pytest.approx([v for _, v in conf_b], rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- shards and records


def test_shard_bounds_cover_every_point_once_in_order():
    for n in (0, 1, 5, 7, 100):
        for world in (1, 2, 3, 8):
            blocks = [shard_bounds(n, r, world) for r in range(world)]
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            sizes = [hi - lo for lo, hi in blocks]
            assert max(sizes) - min(sizes) <= 1


@dataclasses.dataclass
class _MoreRecords(PointRecords):
    """A later PointRecords with extra per-point fields (like the ones other features add)."""

    margin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    logits: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))


def _records(ids: np.ndarray, seed: int) -> _MoreRecords:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return _MoreRecords(
        index=ids, label=rng.integers(0, 3, n), clean_pred=rng.integers(0, 3, n), pred=rng.integers(0, 3, (2, n)),
        step=rng.integers(-1, 4, (2, n)), attack_names=["pgd", "temp-pgd"], attack_seconds=[1.0, 2.0],
        clean_seconds=0.5, zero_grad=[1, 0], attacked=[n, n // 2], rescored=2, rescore_disagreed=1,
        examples={"label": np.array([0, 1])[:n], "index": ids[:2]}, warnings=["w"],
        margin=rng.random(n), logits=rng.random((n, 3)))


def test_concat_records_joins_every_per_point_field_generically():
    parts = [_records(np.arange(0, 4), 0), _records(np.arange(4, 9), 1), _records(np.arange(9, 9), 2)]
    whole = concat_records(parts, examples_per_class=1)
    assert type(whole) is _MoreRecords
    assert whole.index.tolist() == list(range(9))
    assert np.array_equal(whole.step, np.concatenate([p.step for p in parts], axis=1))
    assert np.array_equal(whole.margin, np.concatenate([p.margin for p in parts]))
    assert np.array_equal(whole.logits, np.concatenate([p.logits for p in parts]))  # (N, 3): along the first axis
    assert whole.attacked == [9, 4] and whole.attack_seconds == [3.0, 6.0] and whole.zero_grad == [3, 0]
    assert whole.clean_seconds == 1.5 and whole.rescored == 6 and whole.rescore_disagreed == 3
    assert whole.examples["label"].tolist() == [0, 1] and whole.examples["index"].tolist() == [0, 1]
    assert whole.warnings == ["w"]
    bad = _records(np.arange(9, 11), 3)
    bad.attack_names = ["pgd", "other"]
    with pytest.raises(ValueError, match="attack_names"):
        concat_records(parts[:2] + [bad], examples_per_class=1)


# --------------------------------------------------------------------------- audits under torchrun


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert cli.main(["audit", str(DEMO), *AUDIT_ARGS, "--sanity", "--out", str(out), "--quiet"]) == 0
    return out


def test_sharded_audit_is_identical_to_one_process(one_process, tmp_path):
    out = tmp_path / "two"
    proc = torchrun("audit", str(DEMO), *AUDIT_ARGS, "--sanity", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((one_process / "results.json").read_text())
    two = json.loads((out / "results.json").read_text())
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    assert two["dataset"]["n_eval"] == 70
    assert_same_up_to_confidences(_comparable(two), _comparable(one))  # --sanity's large-radius check included
    assert two["sanity"]["large_eps"]["n"] > 35  # more than rank 0's own shard
    assert_same_up_to_confidences(json.loads((out / "points.json").read_text()),
                                  json.loads((one_process / "points.json").read_text()))
    # examples.npz: the first broken points met per class, which depends on batch boundaries (as --batch-size does)
    a, b = np.load(one_process / "examples.npz"), np.load(out / "examples.npz")
    assert a.files == b.files and np.bincount(b["label"]).max() <= 2
    assert set(b["index"].tolist()) <= set(json.loads((out / "points.json").read_text())["index"])
    assert proc.stdout.count("results: ") == 1  # rank 1 prints nothing
    assert "70/70" in proc.stderr  # one bar, counting both ranks' points (rank 0 has 35)
    assert "[rank 1]" not in proc.stderr


def _image_folder(root: Path, n_test: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", [20, 12, 8, 5, 3, 2]), ("test", [n_test] * 6)):
        for c, n in enumerate(per_class):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_a_failing_rank_stops_every_rank_and_nothing_is_written(tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = root / "test" / "c5" / "2.png"  # the last point: only rank 1 decodes it
    bad.write_bytes(bad.read_bytes()[:60])  # header intact (the size scan passes), pixels cut off
    out = tmp_path / "out"
    args = ["audit", "timm:test_resnet", "--random-weights", "--force", "--dataset", "imagefolder", "--data-root",
            str(root), "--steps", "2", "--no-html", "--no-pdf", "--quiet", "--device", "cpu", "--out", str(out)]
    # (--force: no clean check first, so that only rank 1 decodes the broken image, in its own shard)
    proc = torchrun(*args)
    assert proc.returncode != 0
    assert "[rank 1] error: cannot read image" in proc.stderr and "2.png" in proc.stderr
    assert not out.exists()


def test_ranks_with_different_flags_stop_before_anything_is_created(tmp_path):
    """A multi-node launch where one node was given another --eps: every rank stops with one line, no folder."""
    launcher = tmp_path / "per_rank.py"
    out = tmp_path / "out"
    launcher.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli\n"
        "eps = '0.5' if os.environ['RANK'] == '1' else '8/255'\n"
        f"sys.exit(cli.main(['audit', {str(DEMO)!r}, '--eps', eps, '--steps', '1', '--n-per-class', '2', "
        f"'--no-html', '--no-pdf', '--quiet', '--device', 'cpu', '--out', {str(out)!r}]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TAILAUDIT_DIST_TIMEOUT="120")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(launcher)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "[rank 1] error: this rank's flags differ from rank 0's (eps 0.5 here, 0.03137" in proc.stderr
    assert not out.exists()


def test_workers_give_the_same_results(tmp_path):
    root = _image_folder(tmp_path / "data", n_test=4)
    runs = []
    for workers in (0, 2):
        cfg = AuditConfig(model="timm:test_resnet", weights="random", force=True, dataset="imagefolder",
                          data_root=str(root), steps=2, eps=0.1, batch_size=5, quiet=True, device="cpu",
                          workers=workers, out=str(tmp_path / f"w{workers}"))
        torch.manual_seed(0)
        runs.append(run_audit(cfg))
    assert runs[1].results.config["workers"] == 2
    assert _comparable(runs[0].results.to_json()) == _comparable(runs[1].results.to_json())
    assert (runs[0].out_dir / "points.json").read_text() == (runs[1].out_dir / "points.json").read_text()


def test_workers_flag_is_checked(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["audit", str(DEMO), "--workers", "-1"])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


# --------------------------------------------------------------------------- DDP repair


def _ddp_worker(rank: int, port: int, out: str) -> None:
    """One rank of a two-process repair (spawned with the launcher's environment variables)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from audit.run import distributed
    from reat_finetune import RepairConfig, repair
    from tailaudit import run_repair

    real = repair.fine_tune

    def keep_final_weights(setup, config, **kw):
        result = real(setup, config, **kw)
        torch.save({"final": {k: v.clone() for k, v in setup.fm.pixel_model.net.state_dict().items()},
                    "best": result.best_state}, Path(out) / f"weights-rank{rank}.pt")
        return result

    repair.fine_tune = keep_final_weights
    audit = AuditConfig(model=str(DEMO), dataset="digitslt", eps=0.1, attacks=("pgd",), steps=3,
                        n_per_class=5, quiet=True, device="cpu")
    try:
        run_repair(RepairConfig(audit=audit, epochs=1, batch_size=64, formats=(), quiet=True, out=out))
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def ddp_repair(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    out.mkdir()
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return out


def test_ddp_epoch_leaves_identical_weights_on_both_ranks(ddp_repair):
    w0, w1 = (torch.load(ddp_repair / f"weights-rank{r}.pt", weights_only=True) for r in (0, 1))
    for which in ("final", "best"):
        assert w0[which].keys() == w1[which].keys()
        assert all(torch.equal(w0[which][k], w1[which][k]) for k in w0[which]), which
    start = torch.load(ddp_repair / "checkpoint.pt", weights_only=True)
    assert start["world_size"] == 2 and len(start["ranks"]) == 2
    assert all(torch.equal(start["model"][k], w0["final"][k]) for k in w0["final"])
    log = json.loads((ddp_repair / "training_log.json").read_text())
    # counts of the whole global batches: the evaluations' windows cover the one epoch together
    assert sum(sum(e["adv_pred_counts"]) for e in log["epochs"][1:]) == log["n_train"]
    for side in ("before", "after"):
        res = json.loads((ddp_repair / side / "results.json").read_text())
        # 50 evaluation points, 10 carved off for checkpoint selection: both audits report the other 40
        assert res["environment"]["world_size"] == 2 and res["dataset"]["n_eval"] == 40
    assert json.loads((ddp_repair / "repair.json").read_text())["environment"]["world_size"] == 2


def test_resume_with_another_world_size_is_refused(ddp_repair, capsys):
    code = cli.main(["repair", str(DEMO), "--dataset", "digitslt", "--n-per-class", "5", "--attacks", "pgd",
                     "--steps", "3", "--eps", "0.1", "--epochs", "1", "--batch-size-train", "64", "--device", "cpu",
                     "--no-html", "--no-pdf", "--quiet", "--resume", str(ddp_repair)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "written by 2 process(es), this run has 1" in err


def test_sync_batchnorm_swap_shares_tensors_and_is_undone():
    from reat_finetune.ddp import convert_sync_batchnorm, restore_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(4 * 36)))
    bn = net[1]
    swaps = convert_sync_batchnorm(net)
    assert (len(swaps) == 2 and isinstance(net[1], torch.nn.SyncBatchNorm)
            and isinstance(net[2][1], torch.nn.SyncBatchNorm))
    assert net[1].weight is bn.weight and net[1].running_mean is bn.running_mean
    with torch.no_grad():
        net[1].running_mean.add_(1.0)
    restore_batchnorm(swaps)
    assert net[1] is bn and type(net[2][1]) is torch.nn.BatchNorm1d
    assert torch.equal(bn.running_mean, torch.ones(4))


@pytest.mark.parametrize("in_memory", [True, False])
def test_training_images_decode_the_same_with_workers(tmp_path, monkeypatch, in_memory):
    from audit.data import load_dataset
    from reat_finetune import train

    if not in_memory:
        monkeypatch.setattr(train, "IN_MEMORY_LIMIT", 0)  # decoded batch by batch
    data = load_dataset("imagefolder", data_root=_image_folder(tmp_path / "data"))
    idx = np.arange(0, len(data.train_labels), 2)
    plain, pooled = (train.BatchSource(data.train, idx, data.train_labels, data.image_shape, workers=w) for w in (0, 2))
    assert (plain.x is not None) == in_memory
    pos = torch.tensor([5, 0, 3, 9])
    (xa, ya), (xb, yb) = plain.batch(pos), pooled.batch(pos)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (4, 3, 8, 8)
