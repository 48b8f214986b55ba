"""Objects a notebook hands the Python API are checked, not trusted (issue 29 item 4, issue 28 item 8).

Whatever can be read by a documented rule (a tuple or dict output, a module that writes into its input,
uint8 items among float ones) gives the figures of the same model and images given plainly; everything
else is refused with one short sentence naming the API argument, never a repr of the user's data.
"""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

import tailaudit
from audit.data import from_torch, load_dataset
from audit.errors import ConfigError, DatasetError, ModelLoadError, TailAuditError

MAX_LINE = 600  # a refusal is one line, short (the ungradable-model one, the longest, is 500)


@pytest.fixture(scope="module")
def digits():
    """A linear digits classifier trained in a few steps and the 500 evaluation digits as 8-bit pixels:
    ``images`` (float, k/255) and ``raw`` (the same pixels as uint8)."""
    data = load_dataset("digitslt")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    xs = torch.stack([data.train[i][0] for i in range(len(data.train))])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xs), torch.as_tensor(data.train_labels)).backward()
        opt.step()
    raw = torch.stack([data.test[i][0] for i in range(len(data.test))]).mul(255).round().to(torch.uint8)
    return net.eval(), raw.float() / 255, raw, torch.as_tensor(data.test_labels), data


def _audit(model, dataset, tmp_path, name, **kw):
    config = tailaudit.AuditConfig(model=model, dataset=dataset, n_per_class=4, steps=3, eps=0.1, quiet=True,
                                   out=str(tmp_path / name), **kw)
    return tailaudit.run_audit(config).results


def _figures(results):
    summary = dataclasses.replace(results.summary, calibration=None)
    return [(r.name, r.clean_acc, r.robust_acc) for r in results.per_class], summary


def _refusal(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) <= MAX_LINE, text
    assert "--" not in text, f"a Python error names a command-line flag: {text}"
    return text


class Mixed(Dataset):
    """The same images, but the later half handed out as uint8 0..255 (a transform that forgot ToTensor)."""

    def __init__(self, images, raw, labels):
        self.images, self.raw, self.labels = images, raw, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (self.raw[i] if i >= len(self.labels) // 2 else self.images[i]), int(self.labels[i])


class Items(Dataset):
    """Items as a notebook might build them: ``make(i)`` gives item ``i``."""

    def __init__(self, n, make):
        self.n, self.make = n, make

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


def test_uint8_items_among_float_ones_give_the_figures_of_the_same_images(digits, tmp_path):
    net, images, raw, labels, _ = digits
    right = _audit(net, TensorDataset(images, labels), tmp_path, "right")
    mixed = _audit(net, Mixed(images, raw, labels), tmp_path, "mixed")
    assert right.summary.clean.overall > 0.6
    assert _figures(mixed) == _figures(right)


def test_pixels_outside_0_1_at_a_later_item_are_refused(digits, tmp_path):
    net, images, _, labels, _ = digits
    wide = images.clone()
    wide[len(wide) // 2:] = wide[len(wide) // 2:] * 4 - 1.5  # [-1.5, 2.5]: normalised twice
    with pytest.raises(DatasetError) as info:
        _audit(net, TensorDataset(wide, labels), tmp_path, "wide")
    assert "[0, 1]" in _refusal(info.value) and "item 250" in str(info.value)
    assert not (tmp_path / "wide").exists()


def _listed_wide(digits) -> tuple[nn.Module, TensorDataset]:
    """The digits with items from 400 on normalised twice, in a dataset that lists its ``targets`` (read lazily)."""
    net, images, _, labels, _ = digits
    wide = images.clone()
    wide[400:] = wide[400:] * 4 - 1.5

    class Listed(TensorDataset):
        targets = labels.tolist()

    return net, Listed(wide, labels)


def test_later_items_read_lazily_are_checked_as_they_are_read(digits, tmp_path):
    """A dataset that lists its ``targets`` is not decoded up front: its items are checked when the audit reads them."""
    net, listed = _listed_wide(digits)
    with pytest.raises(DatasetError, match=r"\[0, 1\]") as info:
        _audit(net, listed, tmp_path, "lazy")
    _refusal(info.value)
    assert not (tmp_path / "lazy").exists()


class TupleNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.flatten(1)


class DictNet(TupleNet):
    def forward(self, x):
        return {"features": x.flatten(1), "logits": self.net(x)}


class InPlaceNet(TupleNet):
    def forward(self, x):
        x.mul_(2).sub_(1)  # normalises its input in place
        return self.net((x + 1) / 2)


def test_tuple_dict_and_in_place_modules_audit_like_the_plain_module(digits, tmp_path, caplog):
    net, images, _, labels, _ = digits
    data = TensorDataset(images, labels)
    right = _figures(_audit(net, data, tmp_path, "plain"))
    with caplog.at_level(logging.WARNING):
        assert _figures(_audit(TupleNet(net), data, tmp_path, "tuple")) == right
        assert _figures(_audit(DictNet(net), data, tmp_path, "dict")) == right
    said = [r.getMessage() for r in caplog.records if "as the logits" in r.getMessage()]
    assert len(said) == 2 and "first element" in said[0] and "'logits' entry" in said[1]
    assert _figures(_audit(InPlaceNet(net), data, tmp_path, "inplace")) == right
    assert torch.equal(data.tensors[0], images)  # the caller's images are untouched


def test_outputs_without_a_rule_are_refused_in_one_sentence(digits, tmp_path):
    net, images, _, labels, _ = digits

    class NoLogits(TupleNet):
        def forward(self, x):
            return {"scores": self.net(x)}

    with pytest.raises(ModelLoadError, match="without a 'logits' tensor") as info:
        _audit(NoLogits(net), TensorDataset(images, labels), tmp_path, "nologits")
    _refusal(info.value)


@pytest.mark.parametrize("case", ["string labels", "triples", "mixed sizes", "one-hot labels", "float labels",
                                  "int64 pixels", "HWC images", "meta images"])
def test_dataset_items_refused_in_one_short_sentence(digits, case):
    _, images, _, labels, _ = digits
    secret = "SECRET-" + "x" * 5000  # user data that must never reach the message
    makers = {
        "string labels": (lambda i: (images[i], f"{secret}{i}"), "text"),
        "triples": (lambda i: (images[i], int(labels[i]), f"/data/{secret}.png"), "3 parts"),
        "mixed sizes": (lambda i: (images[i] if i < 3 else torch.rand(1, 9, 9), int(labels[i])), "one size"),
        "one-hot labels": (lambda i: (images[i], nn.functional.one_hot(labels[i], 10).float()), "one-hot"),
        "float labels": (lambda i: (images[i], float(labels[i])), "class indices"),
        "int64 pixels": (lambda i: (images[i].long(), int(labels[i])), "uint8"),
        "HWC images": (lambda i: (images[i].permute(1, 2, 0).expand(8, 8, 3), int(labels[i])), "permute"),
        "meta images": (lambda i: (images[i].to("meta"), int(labels[i])), "meta device"),
    }
    make, needle = makers[case]
    with pytest.raises(DatasetError) as info:
        from_torch(Items(20, make))
    text = _refusal(info.value)
    assert needle in text and "SECRET" not in text


def test_one_hot_targets_refused_in_one_sentence(digits):
    _, images, _, labels, _ = digits

    class OneHot(TensorDataset):
        targets = nn.functional.one_hot(labels, 10).float()

    with pytest.raises(DatasetError, match="one-hot") as info:
        from_torch(OneHot(images, labels))
    _refusal(info.value)


def test_a_list_of_pairs_is_refused_without_its_repr(digits, tmp_path):
    net, images, _, labels, _ = digits
    pairs = [(images[i], int(labels[i])) for i in range(len(labels))]
    with pytest.raises(ConfigError) as info:
        _audit(net, pairs, tmp_path, "pairs")
    text = _refusal(info.value)
    assert "dataset=" in text and "TensorDataset" in text and "tensor([" not in text
    with pytest.raises(TailAuditError) as info:
        _audit(net, "y" * 30000, tmp_path, "longname")
    assert len(_refusal(info.value)) < 300


@pytest.mark.parametrize("field,value,needle", [
    ("eps", "8/255", "eps= must be a number (e.g. eps=8/255), got a str"),
    ("eps", [1 / 255, 2 / 255], "eps_curve="),
    ("steps", "3", "steps= must be a whole number"),
    ("model", None, "model= must be an nn.Module"),
    ("quiet", "yes", "quiet= must be True or False"),
    ("attacks", "pgd", "attacks= must be a list"),
    ("mean", "0.5", "mean= must be a list of numbers"),
    ("dataset", None, "dataset= must be"),
])
def test_config_fields_are_type_checked_naming_the_argument(digits, tmp_path, field, value, needle):
    net = digits[0]
    kw = {"model": net, "dataset": "digitslt", "quiet": True, field: value}
    with pytest.raises(ConfigError) as info:
        tailaudit.run_audit(tailaudit.AuditConfig(out=str(tmp_path / "t"), **kw))  # type: ignore[arg-type]
    assert needle in _refusal(info.value)
    assert not (tmp_path / "t").exists()


def test_repair_fields_are_type_checked_naming_the_argument(digits):
    audit = tailaudit.AuditConfig(model=digits[0])
    with pytest.raises(TailAuditError, match="lr= must be a number( or None)?, got a str") as info:
        tailaudit.run_repair(tailaudit.RepairConfig(audit=audit, lr="0.1"))  # type: ignore[arg-type]
    _refusal(info.value)


# -- issue 28 item 8: the Python API as a notebook user expects --------------------------------------------------

def test_errors_raised_to_python_name_arguments_and_the_command_line_keeps_flags(digits, tmp_path, capsys):
    """The engines word refusals for the command line; from Python the same refusal names the API argument."""
    from audit.errors import UngradableModel
    from support import DEMO, run_main

    net = digits[0]
    with pytest.raises(ConfigError) as info:
        tailaudit.run_audit(tailaudit.AuditConfig(model=net, device="tpu", quiet=True, out=str(tmp_path / "d")))
    assert "device='tpu' is not a device" in _refusal(info.value)
    torch.manual_seed(0)
    untrained = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(UngradableModel) as info:  # chance-level answers: stopped before any attack
        tailaudit.run_audit(tailaudit.AuditConfig(model=untrained, quiet=True, out=str(tmp_path / "u")))
    assert "force=True" in _refusal(info.value)
    code, _, err = run_main(["audit", str(DEMO), "--device", "tpu", "--quiet", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--device 'tpu' is not a device" in err


def test_weights_the_audit_cannot_run_get_one_sentence(digits, tmp_path):
    net = digits[0]
    cases = [(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double(), "float64 weights", "model.float()"),
             (nn.Sequential(nn.Flatten(), nn.Linear(64, 10, device="meta")), "meta device", "load_state_dict")]
    for model, what, advice in cases:
        with pytest.raises(ModelLoadError) as info:
            tailaudit.run_audit(tailaudit.AuditConfig(model=model, quiet=True, out=str(tmp_path / "m")))
        text = _refusal(info.value)
        assert what in text and advice in text and "input_size" not in text
    assert not (tmp_path / "m").exists() and net is not None


def test_a_subset_of_an_image_folder_keeps_its_class_names(tmp_path):
    from PIL import Image
    from torchvision import datasets, transforms

    for k, name in enumerate(["ant", "bee", "cat"]):
        (tmp_path / name).mkdir()
        for j in range(3):
            Image.new("RGB", (8, 8), (40 * k, 20 * j, 0)).save(tmp_path / name / f"{j}.png")
    folder = datasets.ImageFolder(str(tmp_path), transform=transforms.ToTensor())
    picked = Subset(Subset(folder, [0, 2, 3, 5, 6, 8]), [0, 2, 3, 4, 5])  # a Subset of a Subset
    data = from_torch(picked, train_counts=[10, 5, 1])
    assert data.class_names == ["ant", "bee", "cat"]
    assert data.test_labels.tolist() == [0, 1, 1, 2, 2]
    assert data.test[1][1] == 1 and data.test[1][0].shape == (3, 8, 8)


def test_a_run_compared_with_itself_is_refused(tiny_audit, tmp_path):
    results = tiny_audit[0] / "results.json"
    with pytest.raises(ConfigError) as info:
        tailaudit.render(results, compare=results, out=tmp_path / "r", formats=["html"])
    assert "compare= names results.json twice" in _refusal(info.value)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["audit", "repair"])
def test_quiet_silences_a_repair_and_its_audits(digits, tmp_path, capfd, where):
    net, images, _, labels, data = digits
    train = TensorDataset(torch.stack([data.train[i][0] for i in range(len(data.train))]),
                          torch.as_tensor(data.train_labels))
    dataset = from_torch(TensorDataset(images, labels), classes=data.class_names, train=train)
    audit = tailaudit.AuditConfig(model=net, dataset=dataset, n_per_class=2, steps=1, quiet=where == "audit")
    capfd.readouterr()
    tailaudit.run_repair(tailaudit.RepairConfig(audit=audit, steps_total=2, evaluations=1, batch_size=32,
                                                quiet=where == "repair", out=str(tmp_path / "rep"), formats=()))
    out, err = capfd.readouterr()
    assert "points scored" not in err + out and "attacked" not in err + out, err


def test_an_item_refused_in_a_decoding_worker_is_still_one_sentence(digits, tmp_path):
    """With workers=1 torch re-raises the worker's DatasetError with its traceback as the message."""
    net, listed = _listed_wide(digits)
    with pytest.raises(DatasetError, match=r"^dataset images must be float pixels in \[0, 1\], item 4\d\d") as info:
        _audit(net, listed, tmp_path, "worker", workers=1)
    assert "Traceback" not in _refusal(info.value)
