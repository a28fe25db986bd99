import pytest
import torch

from flatlens import FlatlensError
from flatlens.data import load, rotated_digits, split_indices
from flatlens.data.digits import rotate


def test_rotated_digits_domains_are_disjoint_rotated_shards():
    d = rotated_digits(seed=0)
    assert d.domains == ["0", "15", "30", "45", "60", "75"]
    sizes = [len(d.tensors[k][0]) for k in d.domains]
    assert sum(sizes) == 1797 and max(sizes) - min(sizes) <= 1
    assert d.tensors["0"][0].shape[1:] == (1, 16, 16)
    # different seeds give different shards; the same seed the same
    assert torch.equal(rotated_digits(seed=0).tensors["30"][1], d.tensors["30"][1])
    assert not torch.equal(rotated_digits(seed=1).tensors["30"][1], d.tensors["30"][1])


def test_rotation_is_a_rotation():
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 7:9, 12:15] = 1.0  # a bar right of the centre
    r = rotate(img, 90)
    ys, xs = torch.nonzero(r[0, 0] > 0.5, as_tuple=True)
    assert xs.float().mean().sub(7.5).abs() < 1.5 and ys.float().mean() < 6  # now above the centre


def test_split_is_seeded_disjoint_80_20():
    a_in, a_out = split_indices(100, 2, seed=0)
    assert len(a_out) == 20 and len(a_in) == 80 and not set(a_in.tolist()) & set(a_out.tolist())
    b_in, _ = split_indices(100, 2, seed=0)
    c_in, _ = split_indices(100, 3, seed=0)
    assert torch.equal(a_in, b_in) and not torch.equal(a_in, c_in)


def _make_folder(root, domains, classes=("dog", "cat"), n=3):
    from PIL import Image
    for d in domains:
        for ci, c in enumerate(classes):
            folder = root / "PACS" / d / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 30), color=(40 * ci, 10 * i, 200)).save(folder / f"{i}.jpg")


def test_domainbed_image_folders(tmp_path):
    pytest.importorskip("torchvision")
    doms = ["sketch", "art_painting", "photo", "cartoon"]
    _make_folder(tmp_path, doms)
    data = load("pacs", str(tmp_path), image_size=32)
    assert data.domains == sorted(doms)  # DomainBed: sorted folder order
    assert data.num_classes == 2 and data.in_channels == 3
    x, y = data.get("photo", False)[0]
    assert x.shape == (3, 32, 32) and y in (0, 1)
    xa, _ = data.get("photo", True)[0]
    assert xa.shape == (3, 32, 32)
    from flatlens.train import TrainConfig, train
    ck = train(TrainConfig(dataset="pacs", data_root=str(tmp_path), test_domains=["sketch"], arch="resnet18",
                           steps=2, eval_every=1, batch_size=2, bits=4, quant_start=1), quiet=True, data=data)
    assert ck.data.train_domains == ["art_painting", "cartoon", "photo"]
    assert set(ck.metrics["test_acc"]) == {"sketch"}


def test_missing_data_names_expected_layout(tmp_path):
    pytest.importorskip("torchvision")
    with pytest.raises(FlatlensError, match="art_painting"):
        load("pacs", str(tmp_path / "nowhere"))
    with pytest.raises(FlatlensError, match="unknown dataset"):
        load("mnist-c")


def test_dataset_names_are_read_one_way_from_the_registry():
    from flatlens.data import DATASETS, DOMAINBED, dataset_key, domain_names
    assert [dataset_key(s) for s in ("PACS", "office_home", "Terra-Incognita", "rotated-digits", "mnist")] == \
        ["pacs", "officehome", "terraincognita", "rotated-digits", None]
    assert all(dataset_key(d) == d for d in DATASETS)
    assert domain_names("vlcs") == DOMAINBED["vlcs"][1] and domain_names("rotated-digits")[0] == "0"
