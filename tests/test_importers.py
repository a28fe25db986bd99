"""Checkpoints flatlens did not write, built here the way their trainers build them: a DomainBed ERM wrapper
(`featurizer.network` / `classifier`, the `network` Sequential, pathlib values in `args`), a QT-DoG model with
quantized convs (`quan_w_fn.s` per channel, an unused `quan_a_fn.s`), a torchvision state dict and a user's own
module, on a tiny PACS-shaped image folder made here."""
import math
import os
import pathlib
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")

from flatlens.checkpoint import build_model, load_checkpoint  # noqa: E402
from flatlens.cli import main  # noqa: E402
from flatlens import FlatlensError  # noqa: E402
from flatlens.importers import ImportOptions, load_any  # noqa: E402

PACS = ["art_painting", "cartoon", "photo", "sketch"]
SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from PIL import Image
    r = tmp_path_factory.mktemp("data")
    g = np.random.default_rng(0)
    for d in PACS:
        for c in ("dog", "horse"):
            os.makedirs(r / "PACS" / d / c)
            for i in range(5):
                Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(r / "PACS" / d / c / f"{i}.png")
    return r


class Identity(nn.Module):
    def forward(self, x):
        return x


class Featurizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.network = torchvision.models.resnet18()
        del self.network.fc
        self.network.fc = Identity()

    def forward(self, x):
        return self.network(x)


class ERM(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        self.featurizer = Featurizer()
        self.classifier = nn.Linear(512, classes)
        self.network = nn.Sequential(self.featurizer, self.classifier)

    def forward(self, x):
        return self.network(x)


class LsqQuan(nn.Module):
    def __init__(self, w, bits=7):
        super().__init__()
        self.qn, self.qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        self.s = nn.Parameter(2 * w.detach().abs().mean(dim=(1, 2, 3), keepdim=True) / math.sqrt(self.qp))

    def forward(self, w):
        return torch.round(torch.clamp(w / self.s, -self.qn, self.qp)) * self.s


class ActQuan(nn.Module):
    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(1))


class QuanConv2d(nn.Conv2d):
    """The QT-DoG code's wrapper: latent weight, a weight quantizer, an (unused) activation quantizer."""

    def __init__(self, m: nn.Conv2d, bits=7):
        super().__init__(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                         dilation=m.dilation, groups=m.groups, bias=m.bias is not None)
        self.weight = nn.Parameter(m.weight.detach().clone())
        self.quan_w_fn = LsqQuan(self.weight, bits)
        self.quan_a_fn = ActQuan()

    def forward(self, x):
        return self._conv_forward(x, self.quan_w_fn(self.weight), self.bias)


def _quantize(module, bits=7):
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, QuanConv2d(child, bits))
        else:
            _quantize(child, bits)


def _model(seed, quantized=False):
    torch.manual_seed(seed)
    m = ERM()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.8, 1.2)
    if quantized:
        _quantize(m.featurizer.network)
        m.network = nn.Sequential(m.featurizer, m.classifier)
    return m.eval()


def _save(path, model, root, algorithm="ERM"):
    args = {"dataset": "PACS", "algorithm": algorithm, "test_envs": [3], "holdout_fraction": 0.2, "trial_seed": 0,
            "seed": 0, "data_dir": pathlib.Path(root), "out_dir": pathlib.Path("/tmp/out"),
            "out_root": pathlib.Path("/tmp"), "work_dir": pathlib.Path(".")}
    torch.save({"args": args, "model_hparams": {"resnet18": True, "freeze_bn": True, "resnet_dropout": 0.0,
                                                 "lr": 5e-5, "batch_size": 32},
                "test_envs": [3], "model_dict": model.state_dict()}, path)


@pytest.fixture(scope="module")
def files(root, tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    erm, qt = _model(0), _model(1, quantized=True)
    _save(d / "TE3_erm.pth", erm, root)
    _save(d / "TE3_qtdog.pth", qt, root, algorithm="ERM_QT")
    return {"dir": d, "erm": erm, "qt": qt, "x": torch.randn(4, 3, SIZE, SIZE)}


def test_domainbed_file_holds_paths_and_duplicated_keys(files):
    with pytest.raises(Exception):  # a plain safe load refuses it (pathlib values)
        torch.load(files["dir"] / "TE3_erm.pth", weights_only=True)
    sd = files["erm"].state_dict()
    assert "featurizer.network.conv1.weight" in sd and "network.0.network.conv1.weight" in sd


def test_imported_erm_and_qtdog_logits_equal_the_source_models(files, root):
    opts = ImportOptions(image_size=SIZE)
    erm = load_any(files["dir"] / "TE3_erm.pth", opts)
    assert (erm.arch.name, erm.arch.kwargs) == ("resnet18", {"num_classes": 2}) and erm.quant is None
    assert erm.data.test_domains == ["sketch"] and erm.data.split_rule == "domainbed"
    assert erm.data.root == str(root)
    with torch.no_grad():
        torch.testing.assert_close(build_model(erm)(files["x"]), files["erm"](files["x"]), rtol=0, atol=1e-5)
    qt = load_any(files["dir"] / "TE3_qtdog.pth", ImportOptions(image_size=SIZE))
    assert qt.quant.bits == 7 and len(qt.quant.steps) == 20  # every conv, not the classifier
    assert "7 (--bits" in qt.provenance["bits"] and any("quan_a_fn" in k for k in qt.provenance["mapping"]["dropped"])
    with torch.no_grad():
        deployed = build_model(qt, "deployed")(files["x"])
        torch.testing.assert_close(deployed, files["qt"](files["x"]), rtol=0, atol=1e-5)
        latent = build_model(qt, "latent")(files["x"])
    assert (latent - deployed).abs().max() > 1e-4  # the deployed forward is the quantized one, reproduced


def test_domainbed_split_rule_is_domainbeds(files):
    from flatlens.data import for_protocol, protocol_split
    ck = load_any(files["dir"] / "TE3_erm.pth", ImportOptions(image_size=SIZE))
    data = for_protocol(ck.data)
    for i, d in enumerate(PACS[:3]):
        n = data.size(d)
        keys = list(range(n))
        import hashlib
        np.random.RandomState(int(hashlib.md5(str((0, i)).encode()).hexdigest(), 16) % 2 ** 31).shuffle(keys)
        in_, out = protocol_split(ck.data, data, d)
        assert sorted(out.tolist()) == sorted(keys[:int(n * 0.2)]) and sorted(in_.tolist()) == sorted(keys[int(n * 0.2):])


@pytest.mark.slow
def test_import_evaluate_and_compare_end_to_end(files, root, tmp_path, capsys):
    out = tmp_path / "qt.pt"
    assert main(["import", str(files["dir"] / "TE3_qtdog.pth"), "--out", str(out), "--image-size", str(SIZE)]) == 0
    said = capsys.readouterr().out
    assert "domainbed -> resnet18" in said and "7-bit" in said and "sketch" in said
    ck = load_checkpoint(out)
    assert ck.provenance["source_format"] == "domainbed" and len(ck.provenance["source_sha256"]) == 64
    assert main(["evaluate", str(files["dir"] / "TE3_erm.pth"), "--image-size", str(SIZE)]) == 0
    assert "out-of-domain test" in capsys.readouterr().out
    j = tmp_path / "c.json"
    assert main(["compare", str(files["dir"] / "TE3_erm.pth"), str(out), "--metric", "hessian-trace",
                 "--samples", "8", "--max-hvp", "24", "--image-size", str(SIZE), "--no-cache", "--json", str(j)]) == 0
    from flatlens.compare import Comparison
    rep = Comparison.from_json(j)
    assert len(rep.rows) == 2 and "deployed 7-bit" in rep.records[1].weights_label


def test_a_file_naming_any_other_global_is_refused_and_nothing_runs(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED_IMPORT",))

    evil = tmp_path / "evil.pth"
    torch.save({"args": {"dataset": "PACS", "x": Evil()}, "model_dict": files["erm"].state_dict()}, evil)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"args": Evil()}))
    user = tmp_path / "user.pth"
    torch.save({"args": {"dataset": "PACS"}, "model_hparams": Identity(), "model_dict": {}}, user)
    for f in (evil, legacy, user):
        assert main(["import", str(f), "--out", str(tmp_path / "o.pt")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "PWNED_IMPORT").exists() and not (tmp_path / "o.pt").exists()


def test_torchvision_state_dict_needs_the_right_arch_and_classes(tmp_path, capsys):
    m = torchvision.models.resnet18(num_classes=5)
    torch.save(m.state_dict(), tmp_path / "r18.pt")
    ck = load_any(tmp_path / "r18.pt", ImportOptions(arch="resnet18", num_classes=5))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(build_model(ck)(x), m.eval()(x), rtol=0, atol=1e-6)
    for extra, match in ((["--arch", "resnet50"], "do not fit resnet50"), (["--arch", "resnet18", "--num-classes",
                                                                          "7"], "5 classes"), ([], "--arch")):
        assert main(["import", str(tmp_path / "r18.pt"), "--out", str(tmp_path / "o.pt"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err, err


def test_a_users_own_model_round_trips_with_model_factory(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("import torch\nfrom torch import nn\n\n\ndef make():\n"
                                "    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mypkg", None)
    torch.manual_seed(3)
    src = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    # without --model the file cannot name code to run
    assert main(["evaluate", str(tmp_path / "sd.pt")]) == 2
    capsys.readouterr()
    ck = load_any(tmp_path / "sd.pt", ImportOptions(model="mypkg.mod:make"))
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(build_model(ck)(x), src(x), rtol=0, atol=0)
    torch.save({"x": torch.randn(20, 6), "y": torch.randint(0, 3, (20,))}, tmp_path / "d.pt")
    assert main(["hessian", str(tmp_path / "sd.pt"), "--model", "mypkg.mod:make", "--data", str(tmp_path / "d.pt"),
                 "--metric", "hessian-trace"]) == 0
    assert "Hessian trace" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "sd.pt"), "--model", "mypkg.mod:make", "--out", str(tmp_path / "o.pt")]) == 2


def test_a_classifier_without_bias_is_refused_in_one_line(files, tmp_path):
    raw = torch.load(files["dir"] / "TE3_erm.pth", weights_only=False)  # our own fixture file
    md = raw["model_dict"]
    for k in [k for k in md if k.endswith("bias") and k[:-4] + "weight" in md and md[k[:-4] + "weight"].dim() == 2]:
        del md[k]
    torch.save(raw, tmp_path / "nobias.pth")
    with pytest.raises(FlatlensError, match="has no .*bias"):
        load_any(tmp_path / "nobias.pth", ImportOptions(image_size=SIZE))
