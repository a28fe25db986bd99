import os
import pickle

import pytest
import torch

from flatlens import FlatlensError
from flatlens.checkpoint import load_checkpoint, save_checkpoint


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.fixture(scope="module")
def real():
    """A real 4-bit checkpoint of a tiny digits CNN (two training steps), as a dict."""
    from flatlens.train import TrainConfig, train
    return train(TrainConfig(steps=4, eval_every=4, quant_start=2, bits=4, arch_kwargs={"width": 2}),
                 quiet=True).to_dict()


@pytest.fixture
def good(tmp_path, real):
    p = tmp_path / "good.pt"
    save_checkpoint(p, real)
    return p


def _tampered(real, edit):
    import copy
    ck = copy.deepcopy(real)
    edit(ck)
    return ck


def _set(path, value):
    def edit(ck):
        d = ck
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


def _delete(path):
    def edit(ck):
        d = ck
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return edit


def _first_step(ck):
    return next(iter(ck["quant"]["steps"]))


TAMPERED = {
    "arch kwargs a string": (_set(("arch", "kwargs"), "width=8"), "mapping"),
    "unknown arch kwarg": (_set(("arch", "kwargs", "bogus"), 1), "no argument 'bogus'"),
    "negative width": (_set(("arch", "kwargs", "width"), -3), "outside"),
    "absurd width": (_set(("arch", "kwargs", "width"), 10 ** 7), "outside"),
    "unknown architecture": (_set(("arch", "name"), "vgg99"), "unknown architecture"),
    "width that does not fit the weights": (_set(("arch", "kwargs", "width"), 4), "do not fit"),
    "unknown test domain": (_set(("data", "test_domains"), ["foo"]), "unknown domain"),
    "empty train domains": (_set(("data", "train_domains"), []), "non-empty"),
    "holdout out of range": (_set(("data", "holdout"), 1.5), "holdout"),
    "string split seed": (_set(("data", "split_seed"), "0"), "split_seed"),
    "unknown dataset": (_set(("data", "dataset"), "mnist"), "unknown dataset"),
    "bits 0": (_set(("quant", "bits"), 0), "bits"),
    "bits 99": (_set(("quant", "bits"), 99), "bits"),
    "step for a missing layer": (lambda ck: ck["quant"]["steps"].__setitem__("nope.weight", torch.ones(1)),
                                 "not the weight of a quantized layer"),
    "step of the wrong shape": (lambda ck: ck["quant"]["steps"].__setitem__(_first_step(ck), torch.ones(7)),
                                "shape"),
    "zero step": (lambda ck: ck["quant"]["steps"].__setitem__(_first_step(ck), torch.zeros(2)), "positive"),
    "negative step": (lambda ck: ck["quant"]["steps"].__setitem__(_first_step(ck), -torch.ones(2)), "positive"),
    "NaN weights": (lambda ck: ck["state_dict"]["classifier.weight"].fill_(float("nan")), "non-finite"),
    "metrics without selected_step": (_delete(("metrics", "selected_step")), "selected_step"),
    "metrics without packed_bytes": (_delete(("metrics", "packed_bytes")), "packed_bytes"),
    "accuracy above 1": (_set(("metrics", "mean_test_acc"), 3.0), "accuracy"),
    # to the dtype: a weight of another dtype was cast silently (int: 20.3 % accuracy against 62.7 % recorded)
    "int weights": (lambda ck: ck["state_dict"].__setitem__("classifier.weight",
                                                            ck["state_dict"]["classifier.weight"].int()), "dtype"),
    "bool weights": (lambda ck: ck["state_dict"].__setitem__("classifier.bias",
                                                             ck["state_dict"]["classifier.bias"] > 0), "dtype"),
    "complex NaN weights": (lambda ck: ck["state_dict"].__setitem__(
        "classifier.weight", ck["state_dict"]["classifier.weight"].to(torch.complex64) * float("nan")), "non-finite"),
    "complex weights": (lambda ck: ck["state_dict"].__setitem__(
        "classifier.weight", ck["state_dict"]["classifier.weight"].to(torch.complex64)), "dtype"),
    "float64 weights": (lambda ck: ck["state_dict"].__setitem__(
        "classifier.weight", ck["state_dict"]["classifier.weight"].double()), "dtype"),
    "negative BatchNorm variance": (lambda ck: ck["state_dict"]["features.1.running_var"].fill_(-1.0),
                                    "variances not all positive"),
    "step on a bias": (lambda ck: ck["quant"]["steps"].__setitem__("classifier.bias", torch.ones(10)),
                       "not the weight of a quantized layer"),
    "step on the classifier": (lambda ck: ck["quant"]["steps"].__setitem__("classifier.weight", torch.ones(10)),
                               "not the weight of a quantized layer"),
    "step on running_var": (lambda ck: ck["quant"]["steps"].__setitem__("features.1.running_var", torch.ones(2)),
                            "not the weight of a quantized layer"),
    "step of shape (C, 1)": (lambda ck: ck["quant"]["steps"].__setitem__(
        _first_step(ck), ck["quant"]["steps"][_first_step(ck)].reshape(-1, 1)), "shape"),
    "0-dim step per channel": (lambda ck: ck["quant"]["steps"].__setitem__(_first_step(ck), torch.tensor(0.1)),
                               "shape"),
    "sparse step": (lambda ck: ck["quant"]["steps"].__setitem__(
        _first_step(ck), ck["quant"]["steps"][_first_step(ck)].to_sparse()), "dense float32"),
    "per_channel maybe": (_set(("quant", "per_channel"), "maybe"), "per_channel"),
    "negative selected_step": (_set(("metrics", "selected_step"), -4), "negative"),
    "negative packed_bytes": (_set(("metrics", "packed_bytes"), -1), "packed_bytes"),
    "NaN train_seconds": (_set(("metrics", "train_seconds"), float("nan")), "train_seconds"),
    "test_acc of an unknown domain": (_set(("metrics", "test_acc", "foo"), 0.5), "test_acc"),
    "test_acc a string": (_set(("metrics", "test_acc", "75"), "high"), "accuracy"),
    "history of garbage": (_set(("history",), [1, "x", None]), "history"),
    "domains of integers": (_set(("data", "domains"), [0, 15, 30]), "data.domains"),
    "boolean a string": (_set(("train", "freeze_bn"), "true"), "train.freeze_bn"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_metadata_is_refused_at_load_in_one_line(case, tmp_path, real):
    edit, match = TAMPERED[case]
    p = tmp_path / "t.pt"
    save_checkpoint(p, _tampered(real, edit))
    with pytest.raises(FlatlensError, match=match) as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{p}: invalid checkpoint")


def test_round_trip_is_typed_and_records_hash(good, real):
    from flatlens.checkpoint import Checkpoint, DataProtocol, Quant
    from flatlens._util import sha256_file
    ck = load_checkpoint(good)
    assert isinstance(ck, Checkpoint) and ck.sha256 == sha256_file(good) and ck.path == str(good)
    assert isinstance(ck.quant, Quant) and ck.quant.bits == 4 and isinstance(ck.data, DataProtocol)
    assert ck.data.test_domains == ["75"] and ck.arch.name == "small_cnn"
    again = ck.to_dict()  # what is saved reads back field for field
    assert set(again) == set(real) and again["metrics"] == real["metrics"] and again["data"] == real["data"]


def test_hostile_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"format": "flatlens-checkpoint", "payload": Evil()}, p)
    with pytest.raises(FlatlensError, match="refused"):
        load_checkpoint(p)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(FlatlensError):
        load_checkpoint(legacy)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_truncated_foreign_text_and_missing_files_are_refused(tmp_path, good):
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlatlensError, match="truncated|corrupt|not a checkpoint"):
        load_checkpoint(trunc)
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am a text file\n")
    with pytest.raises(FlatlensError, match="not a checkpoint|truncated|corrupt"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(FlatlensError, match="another format"):
        load_checkpoint(foreign)
    with pytest.raises(FlatlensError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    for msg_path in (trunc, text, foreign):
        try:
            load_checkpoint(msg_path)
        except FlatlensError as e:
            assert "\n" not in str(e)


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, good, monkeypatch):
    before = good.read_bytes()
    import flatlens._util as util

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(util.os, "replace", boom)
    with pytest.raises(FlatlensError, match="disk full"):
        save_checkpoint(good, {"arch": {"name": "x"}, "state_dict": {}, "quant": None, "data": {}, "train": {},
                               "history": [], "metrics": {}})  # (validated at load, not at save)
    assert good.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []
