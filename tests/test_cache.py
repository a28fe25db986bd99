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
