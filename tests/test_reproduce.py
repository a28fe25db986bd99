"""`flatlens reproduce --quick` end to end (the CI smoke test): typed results, the seed-level report, the
figures, resumption, and the registry as the one place a metric is known."""
import json
import os
import re

import matplotlib
import numpy as np
import pytest

from flatlens import metrics as M
from flatlens.cli import build_parser, main
from flatlens.reproduce import ReproduceRun, load_run, metrics_for, quick_plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    assert main(["reproduce", "--quick", "--out", str(out), "--quiet"]) == 0
    return out


def test_outputs_are_typed_and_round_trip(run_dir):
    from flatlens.reproduce import model_specs
    raw = json.loads((run_dir / "results.json").read_text())
    run = ReproduceRun.from_dict(raw)
    assert run.to_dict() == raw  # results.json reads back through the same types, field for field
    plan = quick_plan()
    assert len(run.models) == len(model_specs(plan))
    assert {m.config for m in run.models} == {c for c, _ in plan.configs}
    for mm in run.models:  # what the plan says is measured on each model, no more, no less
        for split in ("train", "test"):
            assert set(mm.measurements.get(split, {})) == set(plan.measured(mm.config, mm.seed, split))
        has = "hessian-density" in mm.measurements["train"]
        assert has == (mm.seed in plan.illustrative_seeds)
    assert run.eoq["printed"].test_acc and run.analysis.claims
    report = (run_dir / "report.md").read_text()
    for section in ("## Summary", "## Confirmatory claims", "## Exploratory comparisons", "## Accuracy",
                    "## Headline measures over seeds, train split", "quantization-noise test", "adjusted p"):
        assert section in report
    assert "(3)" in report and "torch" in report


def test_pairs_share_their_prefix_and_the_last_step(run_dir):
    import torch
    plan = quick_plan()
    for seed in plan.seeds:
        cks = [torch.load(run_dir / "checkpoints" / "testprinted" / f"{c}_s{seed}.pt", weights_only=True)
               for c in sorted(plan.confirmatory_configs())]
        assert len({c["pairing"]["prefix_sha256"] for c in cks}) == 1 and cks[0]["pairing"]["seed"] == seed
        assert {c["metrics"]["selected_step"] for c in cks} == {plan.steps}  # one rule keeps the pair
        # the shared prefix: identical history up to the quantization start
        hist = [[h for h in c["history"] if h.get("step", 0) <= plan.quant_start and "event" not in h] for c in cks]
        assert all(h == hist[0] for h in hist) and hist[0]
    run = load_run(str(run_dir))
    fp = [m for m in run.models if m.config == "fp32" and m.seed == 1][0]
    q7 = [m for m in run.models if m.config == "q7" and m.seed == 1][0]
    other = [m for m in run.models if m.config == "fp32" and m.seed == 2][0]
    # common random numbers within a pair, fresh draws across seeds
    assert fp.record("train", "flatness").seed == q7.record("train", "flatness").seed == 1
    assert fp.record("train", "flatness").data == q7.record("train", "flatness").data
    assert fp.record("train", "flatness").data != other.record("train", "flatness").data


def test_the_family_in_results_is_the_plans_and_holm_runs_over_exactly_it(run_dir):
    from flatlens import stats
    run = load_run(str(run_dir))
    plan = quick_plan()
    assert [dataclasses_asdict(c) for c in run.plan.family] == [dataclasses_asdict(c) for c in plan.family]
    assert 1 <= len(plan.family) <= 6
    an = run.analysis
    assert [c.spec.key for c in an.claims] == [c.key for c in plan.family] == an.family["keys"]
    ps, groups = [], []
    for i, c in enumerate(an.claims):
        ps += [c.test.difference.p, c.test.equivalence.p]
        groups += [i, i]
    adj = stats.holm(ps, exclusive=groups)
    for i, c in enumerate(an.claims):
        assert c.p_diff_adj == pytest.approx(adj[2 * i]) and c.p_equiv_adj == pytest.approx(adj[2 * i + 1])
    assert an.family["hypotheses"] == 2 * len(plan.family)


def dataclasses_asdict(x):
    import dataclasses
    return dataclasses.asdict(x)


def test_every_claim_names_its_tests_n_and_adjusted_p(run_dir):
    from flatlens.report import VERDICTS
    run = load_run(str(run_dir))
    report = (run_dir / "report.md").read_text()
    claims = [line for line in report.splitlines() if line.startswith("- ") and "adjusted p" in line]
    assert len(claims) == len(run.analysis.claims)
    for c, line in zip(run.analysis.claims, claims):
        assert c.statement in line and "paired t over 3 seeds" in line and "95 % CI" in line and "TOST against" in line
        assert line.count("adjusted p = ") == 2
        assert VERDICTS[c.verdict].split("**")[1].split("{")[0].split("(")[0].strip() in line
        assert "80 % power" in line  # every claim (a null result above all) states what the run could detect


def test_rerun_resumes_from_checkpoints_and_cache(run_dir):
    ck = run_dir / "checkpoints" / "testprinted" / "q7_s0.pt"
    mtime = os.path.getmtime(ck)
    first = load_run(str(run_dir))
    n_measurements = sum(len(ms) for m in first.models for ms in m.measurements.values())
    assert first.cache["measure"] == {"hits": 0, "misses": n_measurements, "corrupt_recomputed": 0}
    assert main(["reproduce", "--quick", "--out", str(run_dir), "--quiet", "--jobs", "1"]) == 0
    run = load_run(str(run_dir))
    assert os.path.getmtime(ck) == mtime
    # the measuring step computed nothing twice (the assembly step only ever reads the cache)
    assert run.cache["measure"] == {"hits": n_measurements, "misses": 0, "corrupt_recomputed": 0}
    assert run.cache["collect"]["misses"] == 0


def test_figures_have_expected_axes(run_dir, tmp_path):
    from flatlens.plots import FIGURES
    run = load_run(str(run_dir))
    figs = {name: fn(run) for name, fn in FIGURES.items()}
    f1 = figs["fig1_local_flatness"].axes
    assert [a.get_title() for a in f1[:2]] == ["train flatness, test domain printed", "test flatness, test domain printed"]
    assert "radius" in f1[0].get_xlabel() and "loss increase" in f1[0].get_ylabel()
    assert len(f1[0].get_lines()) == 5 and "over seeds" in f1[0].get_legend().get_title().get_text()
    f2 = figs["fig2_per_seed_pairs"].axes
    assert "eigenvalue" in f2[0].get_ylabel() and "trace" in f2[1].get_ylabel().lower()
    assert any(len(line.get_xdata()) >= 3 for line in f2[0].get_lines())  # a seed's models joined by a line
    f9 = figs["fig9_confirmatory_claims"].axes
    assert len(f9) == len(quick_plan().family) and "margin" in " ".join(
        t.get_text() for t in f9[0].get_legend().get_texts())
    assert figs["fig3_spectral_density"].axes[0].get_yscale() == "log"
    assert "filter-normalized" in figs["fig4_filter_normalized_curves"].axes[0].get_xlabel()
    assert len(figs["fig5_surfaces_2d"].axes) == 6  # five panels and a colour bar
    assert figs["fig5b_surface_3d"].axes[0].name == "3d"
    f6 = figs["fig6_quantization_noise"].axes[0]
    assert "predicted" in f6.get_xlabel() and "measured" in f6.get_ylabel()
    assert any(line.get_label() == "y = x" for line in f6.get_lines())
    f7 = figs["fig7_accuracy_vs_bits"].axes
    assert f7[0].get_xlabel() == "weight bits" and f7[1].get_xlabel() == "training step"
    assert "95 % CI over seeds" in f7[0].get_title()
    assert "corrected" in figs["fig8_quantization_error"].axes[0].get_title()
    f12 = figs["fig12_hessian_vs_ggn_spectra"].axes[0]  # full precision and the paper's bits, Hessian and GGN
    assert [t.get_text() for t in f12.get_legend().get_texts()] == [
        "full precision, Hessian (seed 0)", "full precision, GGN (seed 0)", "7 bit, Hessian (seed 0)",
        "7 bit, GGN (seed 0)"]
    assert f12.get_xscale() == "symlog" and "Ritz value" in f12.get_xlabel()
    ggn = [c.get_offsets()[:, 0] for c, t in zip(f12.collections, f12.get_legend().get_texts()) if "GGN" in t.get_text()]
    assert min(float(x.min()) for x in ggn) > -1e-6 * max(float(x.max()) for x in ggn)  # the GGN has no negative part
    for f in figs.values():
        matplotlib.pyplot.close(f)
    out = tmp_path / "figs"
    assert main(["figures", "--results", str(run_dir), "--out", str(out), "--quiet"]) == 0
    files = sorted(os.listdir(out))
    assert len(files) == 2 * len(FIGURES) and all(os.path.getsize(out / f) > 1000 for f in files)


def test_figures_without_out_write_into_the_run_folder_never_the_reference_figures(run_dir, tmp_path, monkeypatch):
    import hashlib
    import shutil
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "figures"  # stands for the repository's committed reference figures (the old default --out)
    ref.mkdir()
    (ref / "fig1_local_flatness.png").write_bytes(b"reference")
    before = hashlib.sha256((ref / "fig1_local_flatness.png").read_bytes()).hexdigest()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "results.json", run / "results.json")
    assert main(["figures", "--results", str(run), "--quiet", "--formats", "png"]) == 0
    assert hashlib.sha256((ref / "fig1_local_flatness.png").read_bytes()).hexdigest() == before
    assert sorted(os.listdir(ref)) == ["fig1_local_flatness.png"]
    assert (run / "figures" / "fig1_local_flatness.png").stat().st_size > 1000


def test_figures_and_report_without_results_are_clear_errors(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "reproduce" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"plan": 3}')
    assert main(["report", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flatlens: error:") and "not a ReproduceRun" in err


def _numbers(text):
    return re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", text)


def test_renaming_a_display_label_changes_no_number_in_the_report(run_dir, monkeypatch):
    from flatlens.report import write_report
    run = load_run(str(run_dir))
    before = write_report(run)
    reg = dict(M.REGISTRY)
    for name in ("flatness", "hessian-trace", "hessian-eig", "qnoise"):
        m = reg[name]
        # a lookup by label text (the old `row(..., prefix)`) would miss every renamed row and print n/a
        reg[name] = M.Metric(**{**m.__dict__, "specs": tuple(
            M.RowSpec(s.key, "RENAMED " + s.label, s.unit, s.direction, s.prefix) for s in m.specs)})
    with M.swapped(reg):
        after = write_report(run)
    assert "RENAMED" in after and "RENAMED" not in before
    assert _numbers(after.replace("RENAMED", "")) == _numbers(before)


def test_the_report_reads_the_histograms_bins_from_the_fit(run_dir):
    # the quantization-error sentence once printed "50-bin" as text, whatever the fit used
    from flatlens.report import write_report
    run = load_run(str(run_dir))
    assert run.analysis.quant_error, "the quick run fits the quantization error"
    bins = run.analysis.quant_error[0].fit.bins
    assert f"{bins}-bin histogram" in write_report(run)
    run.analysis.quant_error[0].fit.bins = bins + 7
    text = write_report(run)
    assert f"{bins + 7}-bin histogram" in text and f"{bins}-bin histogram" not in text


def test_removing_a_registry_entry_removes_the_metric_everywhere(run_dir, tmp_path, capsys):
    keep = ("hessian-trace", "flatness")
    with M.swapped({n: m for n, m in M.REGISTRY.items() if n in keep}):
        _only_kept_metrics_anywhere(run_dir, tmp_path, capsys, keep)


def _only_kept_metrics_anywhere(run_dir, tmp_path, capsys, keep):
    from flatlens.plots import FIGURES
    from flatlens.report import write_report
    # the CLI: choices, flags and subcommands come from the registry
    parser = build_parser()
    assert main(["compare", "x.pt", "--metric", "qnoise", "--quiet"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert parser.parse_args(["compare", "x.pt", "y.pt"]).metric in keep  # compare's default is a kept entry
    help_text = parser._subparsers._group_actions[0].choices["hessian"].format_help()
    assert "hessian-trace" in help_text and "hessian-eig" not in help_text and "--qnoise-samples" not in help_text
    assert "landscape" not in parser._subparsers._group_actions[0].choices
    ck = run_dir / "checkpoints" / "testprinted"
    j = tmp_path / "cmp.json"
    assert main(["compare", str(ck / "fp32_s0.pt"), str(ck / "q7_s0.pt"), "--metric", "all", "--samples", "64",
                 "--directions", "4", "--no-cache", "--quiet", "--json", str(j)]) == 0
    from flatlens.compare import Comparison
    assert {r.metric for r in Comparison.from_json(j).rows} == set(keep)
    # reproduce measures only what is registered
    plan = quick_plan()
    assert set(metrics_for(plan, 0)) == set(keep) and set(plan.settings.metrics) == set(keep)
    # the report and the figures say nothing of the removed metrics
    run = load_run(str(run_dir))
    text = write_report(run)
    for gone in ("top eigenvalue", "quantization noise", "SLQ", "sharpness", "curve increase"):
        assert gone not in text, gone
    assert "Hessian trace" in text and "local flatness" in text
    figs = {n: f(run) for n, f in FIGURES.items()}
    assert figs["fig3_spectral_density"] is None and figs["fig6_quantization_noise"] is None
    assert figs["fig1_local_flatness"] is not None
    for f in figs.values():
        if f is not None:
            matplotlib.pyplot.close(f)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _children(pid):
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except OSError:
            pass
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_workers_die_with_a_sigkilled_parent(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "flatlens", "reproduce", "--quick", "--out", str(tmp_path / "r"),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    kids = []
    while time.time() < deadline and len(kids) < 2:
        time.sleep(0.5)
        kids = [k for k in _children(proc.pid) if "spawn_main" in open(f"/proc/{k}/cmdline").read()]
    assert len(kids) == 2, "the two workers did not start"
    time.sleep(2)  # let them get to work
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_worker_that_dies_stops_the_run_with_one_line(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "flatlens", "reproduce", "--quick", "--out", str(tmp_path / "r"),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    kids = []
    while time.time() < deadline and not kids:
        time.sleep(0.5)
        kids = [k for k in _children(proc.pid) if "spawn_main" in open(f"/proc/{k}/cmdline").read()]
    assert kids, "no worker started"
    time.sleep(1)
    os.kill(kids[0], signal.SIGKILL)  # as the out-of-memory killer would
    out, err = proc.communicate(timeout=60)  # stops, does not hang
    assert proc.returncode == 1 and err.count("\n") == 1 and "worker died" in err and "Traceback" not in err


def _stable_report_lines(text: str) -> list[str]:
    """report.md without the lines that carry times or the machine (the rest is computed from the run)."""
    return [ln for ln in text.splitlines() if not ln.startswith(("Generated from", "Time:", "Environment:"))]


def test_barriers_over_seeds_refuse_seeds_measured_on_different_grids(run_dir):
    # a mean curve needs one grid: a seed measured at other points is one line, never a misaligned average
    from flatlens._util import FlatlensError
    from flatlens.analysis import barriers
    run = load_run(str(run_dir))
    m = next(m for m in run.models if m.bits is not None and m.record("train", "interpolate") is not None)
    r = m.record("train", "interpolate").result
    r.alphas = [a * 0.5 for a in r.alphas]
    with pytest.raises(FlatlensError, match="grids differ"):
        barriers(run)


def test_quick_run_numbers_and_report_equal_the_stored_reference(run_dir):
    """A refactor moves no number: every leaf of results.json (times, hashes and paths aside) and every line of
    report.md (its time and machine lines aside) equal the stored run of `reproduce --quick`, up to the float32
    summation order of the evaluator's timed layout pick (run_numbers.REL). A change that is meant to move
    numbers regenerates tests/data/ with tests/run_numbers.py's `store`."""
    import run_numbers
    here = os.path.join(os.path.dirname(__file__), "data")
    stored = run_numbers.load(os.path.join(here, "reproduce_quick_numbers.json.gz"))
    now = run_numbers.leaves(json.loads((run_dir / "results.json").read_text()))
    diff = run_numbers.differences(stored, now)
    assert not diff, f"{len(diff)} leaves moved, first: {diff[:5]}"
    with open(os.path.join(here, "reproduce_quick_report.md")) as fh:
        moved = run_numbers.text_differences("\n".join(_stable_report_lines(fh.read())),
                                             "\n".join(_stable_report_lines((run_dir / "report.md").read_text())))
    assert not moved, moved[:3]


def test_plan_prints_each_claims_mde_and_the_expected_time_before_any_work(run_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["reproduce", "--plan", "--quick", "--pilot", str(run_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    plan = quick_plan()
    for c in plan.family:
        assert c.key in text
    assert "MDE80" in text and "expected time" in text and "target" in text and not out.exists()
    # the figure is the formula on the pilot's spread: the family's level, S - 1 df
    from flatlens import stats
    from flatlens.power import claim_power, load_pilot
    pilot = load_pilot(str(run_dir), plan)
    cp = next(c for c in claim_power(plan, pilot) if c.key == "hessian-trace")
    sd = pilot.claims["hessian-trace"].sd_pooled
    S = len(plan.seeds)
    assert cp.mde == pytest.approx(stats.detectable_difference(sd / S ** 0.5, S - 1, alpha=0.05 / len(plan.family)))
    # the default (full) plan with the pilot flatlens ships: a stated plan, no pilot argument needed
    assert main(["reproduce", "--plan"]) == 0
    assert "expected time" in capsys.readouterr().out


def test_the_data_figures_show_every_domain_and_every_configuration(run_dir):
    from flatlens.plots import FIGURES
    run = load_run(str(run_dir))
    f10 = FIGURES["fig10_domain_samples"](run)
    labels = [ax.get_ylabel() for ax in f10.axes if ax.get_ylabel()]
    assert labels == ["mnist", "mnist-photo", "mnist-rotated", "optdigits", "printed (test)"]
    f11 = FIGURES["fig11_domain_accuracy"](run)
    ticks = [t.get_text() for t in f11.axes[0].get_xticklabels()]
    assert len(ticks) == 5 and "printed\n(held out)" in ticks
    for f in (f10, f11):
        matplotlib.pyplot.close(f)


def test_each_quantized_model_is_measured_against_its_seeds_full_precision_model(run_dir):
    """The barrier of every pair (exploratory): each QAT model's interpolation starts at its own seed's
    full-precision model (the same prefix), on the seed's samples; the analysis tests each bit-width's barriers over
    seeds (the barrier of their mean excess curve) with a raw p, the report says so under the exploratory comparisons, figure 12 draws every pair."""
    from flatlens.analysis import BARRIER
    from flatlens.plots import FIGURES
    run = load_run(str(run_dir))
    plan = quick_plan()
    fp = {(m.domain, m.seed): m for m in run.models if m.bits is None}
    for m in run.models:
        rec = m.record("train", "interpolate")
        if m.bits is None:
            assert rec is None  # a full-precision model is the partner, not measured against itself
            continue
        partner = fp[(m.domain, m.seed)]
        assert rec.settings["interpolate"]["partner"] == partner.sha256 == rec.result.endpoints["a"]["sha256"]
        assert rec.data == partner.record("train", "flatness").data   # the seed's own samples, as its pair's
        assert rec.result.bn["policy"] == "recompute" and rec.result.alphas[0] < 0 and rec.result.alphas[-1] > 1
    entries = [e for e in run.analysis.exploratory if e.key.startswith(BARRIER)]
    assert sorted(e.key.split(":")[2].split("@")[0] for e in entries) == sorted(c for c, b in plan.configs if b)
    for e in entries:
        config = e.key.split(":")[2].split("@")[0]
        assert len(e.values) == len(plan.seeds_of(config)) and e.one_sample.test.startswith("max over a of the mean")
        # the barrier of the seeds' mean excess curve on [0, 1], never the mean of per-seed maxima (biased above 0)
        recs = [mm.record("train", "interpolate") for mm in sorted(run.runs(e.domain, config), key=lambda x: x.seed)]
        inside = np.array([0 <= a <= 1 for a in recs[0].result.alphas])
        curve = np.mean([np.asarray(r.result.excess)[inside] for r in recs], axis=0)
        assert e.one_sample.estimate == pytest.approx(curve.max())
    report = (run_dir / "report.md").read_text()
    exploratory = report[report.index("## Exploratory comparisons"):report.index("## Accuracy")]
    assert exploratory.count("loss barrier on the straight line") == len(entries)
    fig = FIGURES["fig13_loss_barriers"](run)
    assert len(fig.axes) == 2 * len(plan.domains) and "barrier" in fig.axes[1].get_ylabel()
    assert len(fig.axes[0].get_lines()) >= sum(len(plan.seeds_of(c)) for c, b in plan.configs if b)
    matplotlib.pyplot.close(fig)
