import csv
import json
import math
import os

import pytest

from flatlens.cli import main
from flatlens.compare import Comparison
from test_cli import ckpts  # noqa: F401,F811  (module-scoped fixture shared with test_cli)


def _run(tmp_path, ckpts, extra=()):  # noqa: F811
    j = tmp_path / "cmp.json"
    code = main(["compare", ckpts["fp"], ckpts["q4"], "--metric", "all", "--split", "both", "--samples", "64",
                 "--directions", "6", "--qnoise-samples", "10", "--points", "5", "--pac-draws", "16",
                 "--pac-quantity", "loss",  # an untrained tiny model's error cannot rise by 0.1: its loss can
                 "--results", str(tmp_path / "res"),
                 "--json", str(j), "--csv", str(tmp_path / "cmp.csv"), "--plot", str(tmp_path / "cmp.png"),
                 "--quiet", *extra])
    return code, Comparison.from_json(j) if j.exists() else None


def _check_verdicts(rep):
    tested = [r for r in rep.rows if r.p is not None and not math.isnan(r.p)]
    assert rep.family["size"] == len(tested) and rep.family["correction"] == "Holm"
    for r in tested:
        assert r.test and r.test_df is not None and r.p_holm >= r.p - 1e-12
        if r.p_holm >= 0.05:
            assert r.verdict == "no significant difference"
        elif r.direction == "lower":
            assert r.verdict == ("flatter" if r.diff < 0 else "sharper")
        else:
            assert r.verdict == ("lower" if r.diff < 0 else "higher")
    return tested


@pytest.mark.slow
def test_compare_checkpoints_json_tests_holm_and_cache(tmp_path, ckpts):  # noqa: F811
    code, rep = _run(tmp_path, ckpts)
    assert code == 0 and rep.mode == "checkpoints" and "measurement noise" in rep.question
    assert rep.versions["torch"] and all(len(c["sha256"]) == 64 for c in rep.checkpoints)
    assert {r.metric for r in rep.rows} == {"hessian-eig", "hessian-trace", "hessian-density", "hessian-diag",
                                            "ggn-eig", "ggn-trace", "fisher-trace", "ggn-density",
                                            "flatness", "curve", "surface", "sharpness", "qnoise", "pac-bayes",
                                            "interpolate"}
    pac = [r for r in rep.rows if r.metric == "pac-bayes" and r.reference]
    assert pac and all(r.p is None and r.verdict.startswith("not tested (each row's interval") for r in pac)
    assert {r.split for r in rep.rows} == {"train", "test"}
    for rec in rep.records:
        assert rec.data["indices_sha256"] and rec.seed == 0 and rec.bn == "eval"
    assert any("deployed 4-bit" in rec.weights_label for rec in rep.records)
    tested = _check_verdicts(rep)
    tests = {r.test for r in tested}
    assert tests == {"paired t", "Welch t"}  # flatness, curves, noise draws, SLQ runs: paired; the trace: Welch
    assert next(r for r in tested if r.metric == "flatness").test == "paired t"
    assert next(r for r in tested if r.metric == "hessian-trace").test == "Welch t"
    eig = [r for r in rep.rows if r.metric == "hessian-eig" and r.reference]
    assert eig and all(r.p is None and r.diff_interval_kind == "bound" and r.verdict.startswith("not tested")
                       for r in eig)
    rows = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    assert len(rows) == len(rep.rows) and {"p", "p_holm", "test", "test_df", "mde80"} <= set(rows[0])
    assert os.path.getsize(tmp_path / "cmp.png") > 0

    # a second run hits the cache for everything and gives the same numbers
    code, rep2 = _run(tmp_path, ckpts)
    assert rep2.cache["misses"] == 0 and rep2.cache["hits"] == rep.cache["misses"]
    assert [r.value for r in rep2.rows] == [r.value for r in rep.rows]

    # a corrupt entry and an edited number are recomputed, never trusted
    cache_dir = tmp_path / "res" / "cache"
    entries = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(cache_dir) for f in fs)
    with open(entries[0], "w") as fh:
        fh.write('{"key": "truncat')
    entry = json.load(open(entries[1]))
    entry["value"]["center_loss"] = 12345.0
    json.dump(entry, open(entries[1], "w"))
    code, rep3 = _run(tmp_path, ckpts)
    assert rep3.cache["corrupt_recomputed"] == 2 and rep3.cache["misses"] == 2
    assert [r.value for r in rep3.rows] == [r.value for r in rep.rows]


def test_mismatched_datasets_refused_unless_data_given(tmp_path, ckpts, capsys):  # noqa: F811
    assert main(["compare", ckpts["fp"], ckpts["other"], "--quiet"]) == 2
    assert "--data" in capsys.readouterr().err
    import torch
    from flatlens.data import rotated_digits
    x, y = rotated_digits().tensors["30"]
    torch.save({"x": x[:40], "y": y[:40]}, tmp_path / "d.pt")
    assert main(["compare", ckpts["fp"], ckpts["other"], "--data", str(tmp_path / "d.pt"), "--metric",
                 "hessian-trace", "--no-cache", "--quiet", "--json", str(tmp_path / "o.json")]) == 0
    rep = Comparison.from_json(tmp_path / "o.json")
    assert rep.records[0].data["dataset"] == "file"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Two methods x three seeds of tiny models, trained here; each seed's two runs branch from one shared
    full-precision prefix (pairs), and a seed-3 pair, and a seed-2 q2 run trained without the prefix."""
    from flatlens.data import rotated_digits
    from flatlens.train import TrainConfig, train, train_prefix
    data = rotated_digits()
    d = tmp_path_factory.mktemp("seeds")
    out = {"fp": [], "q2": [], "extra": {}}
    for seed in range(4):
        cfg = dict(steps=40, eval_every=20, quant_start=20, seed=seed, test_domains=["75"],
                   arch_kwargs={"width": 8}, select="last")
        prefix = str(d / f"prefix_{seed}.state")
        train_prefix(TrainConfig(**cfg), prefix, data=data)
        for name, bits in (("fp", None), ("q2", 2)):
            p = d / f"{name}_{seed}.pt"
            train(TrainConfig(bits=bits, **cfg), str(p), quiet=True, data=data, prefix=prefix)
            (out[name] if seed < 3 else out["extra"].setdefault(name, [])).append(str(p))
        if seed == 2:
            p = d / "q2_2_noprefix.pt"
            train(TrainConfig(bits=2, **cfg), str(p), quiet=True, data=data)
            out["extra"]["noprefix"] = str(p)
    return out


def test_compare_groups_is_seed_level_with_holm(tmp_path, seeds, capsys):
    j = tmp_path / "g.json"
    assert main(["compare", "--group", "fp", *seeds["fp"], "--group", "q2", *seeds["q2"], "--metric", "flatness",
                 "--split", "both", "--samples", "64", "--directions", "4", "--radii", "0", "1", "2",
                 "--results", str(tmp_path / "r"), "--json", str(j)]) == 0
    out = capsys.readouterr().out
    assert "method vs method" in out and "over the checkpoints of each group" in out
    rep = Comparison.from_json(j)
    assert rep.mode == "groups" and rep.groups == {"fp": seeds["fp"], "q2": seeds["q2"]}
    tested = _check_verdicts(rep)
    assert len(tested) == 4 and {r.test for r in tested} == {"Welch t over checkpoints"}
    for r in rep.rows:
        assert r.source == "over 3 seeds" and r.n == 3 and r.df == 2 and len(r.values) == 3
        assert r.within_stderr is not None and r.within_stderr > 0
    # the group's value is the mean of its checkpoints' values (the two-level estimate for flatness)
    fp_r1 = next(r for r in rep.rows if r.subject == "fp" and r.key == "r=1" and r.split == "train")
    per = [rec.row("r=1").value for rec in rep.records if rec.split == "train" and rec.checkpoint in seeds["fp"]]
    assert fp_r1.value == pytest.approx(sum(per) / 3) and fp_r1.values == pytest.approx(per)


def test_compare_groups_needs_three_checkpoints_per_group_and_each_model_once(seeds, capsys):
    assert main(["compare", "--group", "fp", *seeds["fp"][:2], "--group", "q2", *seeds["q2"], "--quiet"]) == 2
    assert "needs >= 3" in capsys.readouterr().err
    assert main(["compare", seeds["fp"][0], "--group", "q2", *seeds["q2"], "--quiet"]) == 2
    capsys.readouterr()
    # the same model twice, in one group or across groups, is one replicate: refused (it once gave p = 0)
    for groups in ((seeds["fp"][:2] + seeds["fp"][:1], seeds["q2"]), (seeds["fp"], seeds["fp"])):
        assert main(["compare", "--group", "a", *groups[0], "--group", "b", *groups[1], "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "same model" in err


def test_compare_paired_equals_ttest_rel_on_the_per_seed_values(tmp_path, seeds, capsys):
    from scipy import stats as ss
    j = tmp_path / "p.json"
    assert main(["compare", "--paired", "--group", "fp", *seeds["fp"], "--group", "q2", *reversed(seeds["q2"]),
                 "--metric", "flatness", "--samples", "64", "--directions", "4", "--radii", "0", "1", "2",
                 "--no-cache", "--json", str(j), "--quiet"]) == 0
    rep = Comparison.from_json(j)
    assert rep.mode == "pairs" and "paired" in rep.question
    rows = [r for r in rep.rows if r.subject == "q2"]
    assert rows and {r.test for r in rows} == {"paired t over seeds"}
    for r in rows:
        ref = next(x for x in rep.rows if x.subject == "fp" and x.key == r.key and x.split == r.split)
        t = ss.ttest_rel(r.values, ref.values)  # the pairs matched by seed, whatever the order given
        assert r.diff == pytest.approx(sum(a - b for a, b in zip(r.values, ref.values)) / 3)
        assert r.test_df == 2 and r.p == pytest.approx(t.pvalue) and r.statistic == pytest.approx(t.statistic)
    # each pair measured with its own seed (the base seed plus the training seed), the same within the pair
    seeds_used = {(rec.checkpoint, rec.seed) for rec in rep.records}
    assert {s for _, s in seeds_used} == {0, 1, 2} and len(seeds_used) == 6


def test_compare_paired_refuses_what_is_not_a_pair(seeds, capsys):
    fp, q2, extra = seeds["fp"], seeds["q2"], seeds["extra"]
    cases = [([*fp], [*q2[:2], extra["q2"][0]], "do not pair"),                 # seeds 0, 1, 2 against 0, 1, 3
             ([*fp], [*q2[:2], extra["noprefix"]], "shared prefix"),             # seed 2 trained without it
             ([*fp[:2], extra["fp"][0]], [*q2[:2], extra["q2"][0]], None)]       # a good pairing: accepted
    for a, b, why in cases:
        code = main(["compare", "--paired", "--group", "a", *a, "--group", "b", *b, "--metric", "hessian-trace",
                     "--samples", "32", "--rtol", "0.5", "--no-cache", "--quiet"])
        err = capsys.readouterr().err
        if why is None:
            assert code == 0, err
        else:
            assert code == 2 and why in err and err.count("\n") == 1, err


def test_compare_paired_zero_spread_is_not_testable(tmp_path, seeds, capsys):
    # b's models are a's weights in other files: every paired difference is exactly 0, which is no evidence of
    # equality: "not testable", never p = 0 or p = 1
    import torch
    from flatlens.checkpoint import save_checkpoint
    copies = []
    for i, p in enumerate(seeds["fp"]):
        ck = torch.load(p, weights_only=True)
        ck["history"] = ck["history"] + [{"note": "copy"}]
        save_checkpoint(tmp_path / f"copy{i}.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
        copies.append(str(tmp_path / f"copy{i}.pt"))
    j = tmp_path / "z.json"
    assert main(["compare", "--paired", "--group", "fp", *seeds["fp"], "--group", "copy", *copies, "--metric",
                 "hessian-eig", "--samples", "32", "--no-cache", "--json", str(j), "--quiet"]) == 0
    r = next(r for r in Comparison.from_json(j).rows if r.subject == "copy")
    assert r.diff == 0 and (r.p is None or math.isnan(r.p))
    assert "not testable" in r.verdict


def test_compare_shows_progress_lines_and_none_when_quiet(tmp_path, ckpts, capsys, monkeypatch):  # noqa: F811
    monkeypatch.delenv("FLATLENS_QUIET", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    args = ["compare", ckpts["fp"], ckpts["q4"], "--metric", "all", "--samples", "32", "--directions", "3",
            "--qnoise-samples", "4", "--points", "3", "--density-iter", "4", "--probes", "4", "--pac-draws", "8",
            "--no-cache"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "compare:" in err and "/30" in err  # the overall line: 15 metrics x 2 checkpoints, with its ETA
    for metric in ("hessian-trace", "flatness", "qnoise"):
        assert f"{metric} {os.path.basename(ckpts['q4'])} (train)" in err
    assert "HVPs" in err and "evaluations" in err
    assert main(args + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_gap_bounds_are_named_as_such_in_a_comparison(tmp_path, ckpts, capsys):  # noqa: F811
    j = tmp_path / "gap.json"
    code = main(["compare", ckpts["fp"], ckpts["q4"], "--metric", "hessian-eig", "--eig-bound", "gap", "--tol",
                 "1e-6", "--split", "train", "--samples", "32", "--json", str(j), "--results", str(tmp_path / "r")])
    assert code == 0
    rep = Comparison.from_json(j)
    rows = [r for r in rep.rows if r.metric == "hessian-eig"]
    assert rows and all(r.interval_kind == "gap-bound" for r in rows)
    assert all(rec.result.main.bound == "gap" and rec.result.main.residual_bounds for rec in rep.records)
    second = next(r for r in rows if r.reference)
    assert second.diff_interval_kind == "gap-bound" and second.p is None  # a bound: not tested
    assert "gap bound" in capsys.readouterr().out


def test_compare_and_the_confirmatory_family_adjust_through_one_holm_family():
    from flatlens import stats
    p = [0.01, 0.04, float("nan"), 0.03]
    adj, level = stats.holm_family(p)  # compare: one hypothesis per row
    assert adj[2] is None and [a for a in adj if a is not None] == [x for x in stats.holm(p) if not math.isnan(x)]
    assert level == stats.ALPHA / 4
    pairs = [0.001, 0.2, 0.03, float("nan")]  # reproduce: each claim's difference and equivalence nulls
    adj, level = stats.holm_family(pairs, exclusive=[0, 0, 1, 1])
    assert adj[3] is None and adj[:3] == stats.holm(pairs, exclusive=[0, 0, 1, 1])[:3]
    assert level == stats.ALPHA / 2  # two claims
    assert stats.significant(0.01) and not stats.significant(0.05) and not stats.significant(None)
    assert not stats.significant(float("nan"))
