import os
import pickle

import pytest
import torch

from flatlens import FlatlensError
from flatlens.checkpoint import load_checkpoint, save_checkpoint


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.pt"
    save_checkpoint(p, {"arch": {"name": "tiny_mlp", "kwargs": {}}, "state_dict": {"w": torch.ones(2)},
                        "quant": None, "data": {}, "train": {}, "history": [], "metrics": {}})
    return p


def test_round_trip_records_hash(good):
    ck = load_checkpoint(good)
    assert ck["format"] == "flatlens-checkpoint" and len(ck["sha256"]) == 64


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
    with pytest.raises(OSError):
        save_checkpoint(good, {"arch": {"name": "x"}, "state_dict": {}, "quant": None, "data": {}, "train": {},
                               "history": [], "metrics": {}})
    assert good.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []
