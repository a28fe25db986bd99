import json
import os

import pytest

from flatlens.cli import main
from test_cli import ckpts  # noqa: F401,F811  (module-scoped fixture shared with test_cli)


def _run(tmp_path, ckpts, extra=()):  # noqa: F811
    j = tmp_path / "cmp.json"
    code = main(["compare", ckpts["fp"], ckpts["q4"], "--metric", "all", "--split", "both", "--samples", "64",
                 "--directions", "6", "--results", str(tmp_path / "res"), "--json", str(j),
                 "--csv", str(tmp_path / "cmp.csv"), "--plot", str(tmp_path / "cmp.png"), "--quiet", *extra])
    return code, json.loads(j.read_text()) if j.exists() else None


@pytest.mark.slow
def test_compare_json_fields_verdicts_and_cache(tmp_path, ckpts):  # noqa: F811
    code, rep = _run(tmp_path, ckpts)
    assert code == 0
    assert {"table", "measurements", "settings", "checkpoints", "bn", "versions", "cache"} <= set(rep)
    assert rep["bn"] == "eval" and rep["versions"]["torch"]
    assert all(len(c["sha256"]) == 64 for c in rep["checkpoints"])
    metrics = {r["metric"] for r in rep["table"]}
    assert metrics == {"hessian-eig", "hessian-trace", "hessian-density", "flatness", "curve", "surface",
                       "sharpness", "qnoise"}
    assert {r["split"] for r in rep["table"]} == {"train", "test"}
    for m in rep["measurements"]:
        assert m["data"]["indices_sha256"] and m["seed"] == 0 and m["bn"] == "eval"
    assert any("deployed 4-bit" in r["weights"] for r in rep["table"])
    for r in rep["table"]:
        if "vs_first_verdict" not in r or r["vs_first_ci95"] is None:
            continue
        lo, hi = r["vs_first_ci95"]
        expect = "sharper" if lo > 0 else "flatter" if hi < 0 else "no significant difference"
        assert r["vs_first_verdict"] == expect
        assert lo <= r["vs_first_diff"] <= hi
    assert rep["cache"]["misses"] > 0
    assert os.path.getsize(tmp_path / "cmp.png") > 0 and (tmp_path / "cmp.csv").read_text().count("\n") > 10

    # a second run hits the cache for everything
    code, rep2 = _run(tmp_path, ckpts)
    assert rep2["cache"]["misses"] == 0 and rep2["cache"]["hits"] == rep["cache"]["misses"]
    assert [r["value"] for r in rep2["table"]] == [r["value"] for r in rep["table"]]

    # a corrupt entry is recomputed, not trusted
    cache_dir = tmp_path / "res" / "cache"
    entries = [os.path.join(dp, f) for dp, _, fs in os.walk(cache_dir) for f in fs]
    with open(entries[0], "w") as fh:
        fh.write('{"key": "truncat')
    code, rep3 = _run(tmp_path, ckpts)
    assert rep3["cache"]["corrupt_recomputed"] == 1 and rep3["cache"]["misses"] == 1
    assert [r["value"] for r in rep3["table"]] == [r["value"] for r in rep["table"]]


def test_mismatched_datasets_refused_unless_data_given(tmp_path, ckpts, capsys):  # noqa: F811
    assert main(["compare", ckpts["fp"], ckpts["other"], "--quiet"]) == 2
    assert "--data" in capsys.readouterr().err
    import torch
    from flatlens.data import rotated_digits
    x, y = rotated_digits().tensors["30"]
    torch.save({"x": x[:40], "y": y[:40]}, tmp_path / "d.pt")
    assert main(["compare", ckpts["fp"], ckpts["other"], "--data", str(tmp_path / "d.pt"), "--metric",
                 "hessian-trace", "--no-cache", "--quiet", "--json", str(tmp_path / "o.json")]) == 0
    rep = json.loads((tmp_path / "o.json").read_text())
    assert rep["measurements"][0]["data"]["dataset"] == "file"
