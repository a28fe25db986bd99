"""The result cache trusts nothing it cannot check: malformed, edited, emptied or null entries are recomputed
and counted as such, never returned."""
import hashlib
import json
import os

import pytest

from flatlens import metrics as M
from flatlens.cache import ResultCache
from flatlens.measure import measure
from flatlens.train import TrainConfig, train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from flatlens.checkpoint import load_checkpoint
    p = tmp_path_factory.mktemp("c") / "m.pt"
    train(TrainConfig(steps=4, eval_every=4, arch_kwargs={"width": 2}), str(p), quiet=True)
    return load_checkpoint(p)


SETTINGS = M.Settings(common=M.Common(samples=32), metrics={"flatness": M.FlatnessSettings(n_directions=3)})


def _entry(folder):
    files = [os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs]
    assert len(files) == 1
    return files[0]


def _rewrite(path, edit, rehash=True):
    e = json.load(open(path))
    edit(e)
    if rehash:  # a forger who also recomputes the integrity hash
        e["sha256"] = hashlib.sha256(json.dumps(e["value"], sort_keys=True, default=str).encode()).hexdigest()
    json.dump(e, open(path, "w"))


@pytest.mark.parametrize("case", ["edited number", "no rows", "rows of another key", "null value", "not json",
                                  "edited without rehash"])
def test_a_bad_entry_is_recomputed_and_counted(case, ckpt, tmp_path):
    cache = ResultCache(str(tmp_path))
    good = measure(ckpt, "flatness", "train", SETTINGS, cache=cache)
    path = _entry(tmp_path)
    if case == "edited number":
        _rewrite(path, lambda e: e["value"]["rows"][0].__setitem__("value", 12345.0))
    elif case == "no rows":
        _rewrite(path, lambda e: e["value"].__setitem__("rows", []))
    elif case == "rows of another key":
        _rewrite(path, lambda e: e["value"]["rows"][0].__setitem__("key", "r=99"))
    elif case == "null value":
        _rewrite(path, lambda e: e.__setitem__("value", None))
    elif case == "not json":
        open(path, "w").write('{"key": "trunc')
    else:
        _rewrite(path, lambda e: e["value"].__setitem__("center_loss", 12345.0), rehash=False)
    again = ResultCache(str(tmp_path))
    rec = measure(ckpt, "flatness", "train", SETTINGS, cache=again)
    assert not rec.cached and again.stats() == {"hits": 0, "misses": 1, "corrupt_recomputed": 1}
    assert [r.value for r in rec.rows] == [r.value for r in good.rows]
    third = ResultCache(str(tmp_path))  # the recomputed entry is whole again
    assert measure(ckpt, "flatness", "train", SETTINGS, cache=third).cached and third.hits == 1


def test_an_entry_moved_under_another_checkpoints_key_is_recomputed(ckpt, tmp_path):
    # m1's key pointing at m0's record (key, parts and integrity hash all rewritten, as a copy would be): the hit
    # once returned m0's numbers for m1 ("difference 0 [0, 0]"); the record must be of the key it was found under
    from flatlens.cache import cache_key
    from flatlens.checkpoint import load_checkpoint
    other_path = tmp_path / "m1.pt"
    train(TrainConfig(steps=4, eval_every=4, arch_kwargs={"width": 2}, seed=1), str(other_path), quiet=True)
    other = load_checkpoint(other_path)
    folder = tmp_path / "cache"
    cache = ResultCache(str(folder))
    measure(ckpt, "flatness", "train", SETTINGS, cache=cache)
    src = json.load(open(_entry(folder)))
    fresh = measure(other, "flatness", "train", SETTINGS, cache=ResultCache(None))  # m1's own numbers
    parts = dict(src["parts"], ckpt=other.sha256)
    key = cache_key(parts)
    forged = {"key": key, "parts": parts, "value": src["value"],
              "sha256": hashlib.sha256(json.dumps(src["value"], sort_keys=True, default=str).encode()).hexdigest()}
    os.makedirs(folder / key[:2], exist_ok=True)
    json.dump(forged, open(folder / key[:2] / f"{key}.json", "w"))
    again = ResultCache(str(folder))
    rec = measure(other, "flatness", "train", SETTINGS, cache=again)
    assert not rec.cached and again.stats()["corrupt_recomputed"] == 1
    from flatlens.measure import MetricRecord
    assert [r.value for r in rec.rows] == [r.value for r in fresh.rows]
    assert [r.value for r in rec.rows] != [r.value for r in MetricRecord.from_dict(src["value"]).rows]


def test_a_chunk_of_the_wrong_shape_with_a_valid_hash_is_recomputed(ckpt, tmp_path):
    import torch
    from flatlens.measure import objective_for, select_data
    from flatlens.perturb import runner
    from flatlens.sharpness import local_flatness
    x, y, _ = select_data(ckpt.data, "train", 32, 0)
    obj = objective_for(ckpt, x, y)
    good = local_flatness(obj, [0.0, 1.0], n_directions=3, store=str(tmp_path / "s"))
    chunks = sorted(p for p in (tmp_path / "s").rglob("chunk-*.pt"))
    d = torch.load(chunks[0], weights_only=True)
    d.pop("_sha256")
    d["inc"] = torch.cat([d["inc"], d["inc"]])  # twice the rows, hash recomputed
    torch.save({**d, "_sha256": runner._digest(d)}, chunks[0])
    again = local_flatness(obj, [0.0, 1.0], n_directions=3, store=str(tmp_path / "s"))
    assert again.increases == good.increases  # the tampered chunk was recomputed, not concatenated


def _make_special(path, kind):
    """Replace `path` by a FIFO or a character device (/dev/null's numbers; skipped where mknod is refused)."""
    import stat
    os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
        return
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (OSError, AttributeError) as e:
        pytest.skip(f"cannot make a device node here ({e}): mknod needs root")


def _finishes(fn, path, guard=60.0):
    """fn() in a thread, which must return within `guard` seconds (its idle time is about a second: load cannot
    trip this). A read blocked opening the FIFO at `path` is released (a writer opens and closes it, so the read
    sees end of file) and the test fails, instead of hanging the suite."""
    import threading
    box = {}

    def go():
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["err"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(guard)
    blocked = t.is_alive()
    while t.is_alive():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        t.join(1.0)
    assert not blocked, f"the read blocked on {path}"
    if "err" in box:
        raise box["err"]
    return box["out"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_file_in_place_of_an_entry_never_blocks_is_recomputed_and_left_in_place(kind, ckpt, tmp_path):
    # a FIFO there once blocked `compare --results R` forever; a device node read as empty and was replaced
    good = measure(ckpt, "flatness", "train", SETTINGS, cache=ResultCache(str(tmp_path)))
    path = _entry(tmp_path)
    _make_special(path, kind)
    before = os.lstat(path)
    again = ResultCache(str(tmp_path))
    rec = _finishes(lambda: measure(ckpt, "flatness", "train", SETTINGS, cache=again), path)
    assert not rec.cached and again.stats() == {"hits": 0, "misses": 1, "corrupt_recomputed": 1}
    assert [r.value for r in rec.rows] == [r.value for r in good.rows]
    after = os.lstat(path)  # left where it was, never replaced by the entry
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_file_in_place_of_a_chunk_never_blocks_is_recomputed_and_left_in_place(kind, ckpt, tmp_path):
    # a FIFO as `--resume-dir RD`'s chunk-000000.pt once blocked `flatness` forever
    from flatlens.measure import objective_for, select_data
    from flatlens.sharpness import local_flatness
    x, y, _ = select_data(ckpt.data, "train", 32, 0)
    obj = objective_for(ckpt, x, y)
    good = local_flatness(obj, [0.0, 1.0], n_directions=3, store=str(tmp_path / "s"))
    path = str(sorted((tmp_path / "s").rglob("chunk-*.pt"))[0])
    _make_special(path, kind)
    before = os.lstat(path)
    again = _finishes(lambda: local_flatness(obj, [0.0, 1.0], n_directions=3, store=str(tmp_path / "s")), path)
    assert again.increases == good.increases
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
