"""The idx reader (MNIST's file format) and rotated-fashion-mnist on a tiny fake Fashion-MNIST folder."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from flatlens import FlatlensError
from flatlens.data import load
from flatlens.data.idx import read_idx

CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
         np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """The idx encoding of `a`, written here independently of the reader."""
    be = a.astype(a.dtype.newbyteorder(">"))
    return (struct.pack(">BBBB", 0, 0, CODES[be.dtype], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
            + be.tobytes())


def write(path, a, gz=False):
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trips_labels_images_and_other_dtypes(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    ints = rng.integers(-1000, 1000, size=(3, 2)).astype(np.int32)
    for name, a in (("images", images), ("labels", labels), ("ints", ints)):
        back = read_idx(write(tmp_path / (name + (".gz" if gz else "")), a, gz))
        assert back.dtype == a.dtype and back.dtype.isnative and np.array_equal(back, a), name
    assert read_idx(tmp_path / ("images" + (".gz" if gz else "")), ndim=3, dtype=np.uint8).shape == (7, 5, 4)


def _one_line_error(path, match, **kw):
    with pytest.raises(FlatlensError, match=match) as e:
        read_idx(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_idx_files_give_one_line_naming_the_file_and_the_fault(tmp_path):
    good = idx_bytes(np.zeros((4, 3, 3), np.uint8))
    _one_line_error(tmp_path / "missing-idx3-ubyte", "no such file")
    (tmp_path / "trunc").write_bytes(good[:-5])
    _one_line_error(tmp_path / "trunc", r"needs 36 data bytes; found 31 \(truncated\)")
    (tmp_path / "long").write_bytes(good + b"\0")
    _one_line_error(tmp_path / "long", "trailing bytes")
    (tmp_path / "trunc.gz").write_bytes(gzip.compress(good)[:-12])
    _one_line_error(tmp_path / "trunc.gz", "gzip")
    (tmp_path / "header").write_bytes(good[:9])
    _one_line_error(tmp_path / "header", "truncated idx header")
    (tmp_path / "magic").write_bytes(b"\x01" + good[1:])
    _one_line_error(tmp_path / "magic", "not an idx file")
    (tmp_path / "code").write_bytes(good[:2] + b"\x07" + good[3:])
    _one_line_error(tmp_path / "code", "unknown idx dtype code 0x07")
    (tmp_path / "ok").write_bytes(good)
    _one_line_error(tmp_path / "ok", "expected idx1", ndim=1)
    _one_line_error(tmp_path / "ok", "expected float32", dtype=np.float32)


def fake_fashion(root, n_train=60, n_test=12, gz=True):
    """Fashion-MNIST's four files with constant images: image i is filled with i + 1, so any rotation keeps
    its identity at the centre pixel; labels i % 10."""
    os.makedirs(root, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, start, n in (("train", 0, n_train), ("t10k", n_train, n_test)):
        ids = np.arange(start, start + n)
        images = np.broadcast_to((ids + 1).astype(np.uint8)[:, None, None], (n, 28, 28)).copy()
        write(root / f"{split}-images-idx3-ubyte{ext}", images, gz)
        write(root / f"{split}-labels-idx1-ubyte{ext}", (ids % 10).astype(np.uint8), gz)
    return n_train + n_test


@pytest.mark.parametrize("gz,size", [(True, 28), (False, 16)])
def test_fake_fashion_folder_loads_as_six_disjoint_rotated_domains(tmp_path, gz, size):
    n = fake_fashion(tmp_path / "fm", gz=gz)
    data = load("rotated-fashion-mnist", str(tmp_path / "fm"), image_size=size if size != 28 else None)
    assert data.domains == ["0", "15", "30", "45", "60", "75"] and data.image_size == size
    assert data.content_sha256 and data.root == str(tmp_path / "fm")
    ids = {}
    for d in data.domains:
        x, y = data.tensors[d]
        assert x.shape[1:] == (1, size, size) and 0 <= float(x.min()) and float(x.max()) <= 1
        ident = torch.round(x[:, 0, size // 2, size // 2] * 255).long() - 1  # the centre keeps the identity
        assert torch.equal(y, ident % 10)
        ids[d] = set(ident.tolist())
        corner = x[:, 0, 0, 0]
        assert bool((corner > 0).all()) if d == "0" else bool((corner == 0).all())  # rotated: the corner is fill
    assert sum(len(v) for v in ids.values()) == n and set().union(*ids.values()) == set(range(n))
    assert [len(ids[d]) for d in data.domains] == [12] * 6  # DomainBed's dealing: shuffled[i::6]


def test_fashion_files_missing_or_broken_give_one_line(tmp_path):
    with pytest.raises(FlatlensError, match="no train-images-idx3-ubyte"):
        load("rotated-fashion-mnist", str(tmp_path))
    fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(FlatlensError, match="holds 12 images but .* 5 labels"):
        load("rotated-fashion-mnist", str(tmp_path))


DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")),
                    reason="Debian's dataset-fashion-mnist is not installed (the fake-folder tests cover the reader)")
def test_debian_fashion_mnist_loads_as_rotated_fashion_mnist():
    data = load("rotated-fashion-mnist", DEBIAN, image_size=16)
    sizes = [len(data.tensors[d][1]) for d in data.domains]
    assert sum(sizes) == 70000 and sizes == [11667] * 4 + [11666] * 2
    for d in data.domains:
        counts = np.bincount(data.tensors[d][1].numpy(), minlength=10)
        assert np.all(np.abs(counts / (len(data.tensors[d][1]) / 10) - 1) <= 0.10)


def test_the_paired_design_runs_on_a_data_set_on_disk(tmp_path):
    # what benchmarks/gpu_suite.py's fashion_paired section runs on a GPU, here on a tiny fake Fashion-MNIST folder
    from flatlens.reproduce import Plan, plan_settings, run, with_family
    root = tmp_path / "fm"
    fake_fashion(root, n_train=300, n_test=60)
    plan = with_family(Plan(dataset="rotated-fashion-mnist", data_root=str(root), image_size=16, domains=("75",),
                            seeds=(0, 1), explore_seeds=1, configs=(("fp32", None), ("q7", 7), ("q2", 2)),
                            steps=12, quant_start=6, eval_every=6, width=4, illustrative_seeds=(),
                            settings=plan_settings("quick", 32)))
    res = run(str(tmp_path / "out"), plan=plan, jobs=1, quiet=True, figures=False)
    assert len(res.models) == 6 and {m.domain for m in res.models} == {"75"}
    assert [c.spec.key for c in res.analysis.claims] == [c.key for c in plan.family]
    from flatlens.checkpoint import load_checkpoint
    ck = load_checkpoint(tmp_path / "out" / "checkpoints" / "test75" / "q7_s1.pt")
    assert ck.data.root == str(root) and ck.pairing.prefix_step == 6
