"""The README runs as written: its Python blocks execute, and its results block is what `flatlens report`
generates from the committed reference run (so no number in it is typed by hand), and the numbers of its views
section are those of the JSON files docs/views/make_views.sh writes."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _blocks(lang):
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


@pytest.mark.parametrize("i", range(len(_blocks("python"))))
def test_python_block_runs_and_prints(i, tmp_path):
    code = _blocks("python")[i]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip(), "every README block prints what it shows"


def test_readme_results_block_is_generated_from_the_reference_run():
    from flatlens.report import README_END, README_START, readme_block
    from flatlens.reproduce import load_run
    text = open(README, encoding="utf-8").read()
    block = text[text.index(README_START) + len(README_START):text.index(README_END)].strip("\n")
    assert block == readme_block(load_run(os.path.join(ROOT, "figures")))


def test_the_domain_samples_are_the_first_figure_and_the_per_domain_accuracies_are_shown():
    """Figure 10 (one image per class of every domain) is the first image a reader meets; figure 11 (every
    configuration's accuracy on every domain) is shown too; every image the README shows exists."""
    text = open(README, encoding="utf-8").read()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images[0] == "figures/fig10_domain_samples.png", images[:3]
    assert "figures/fig11_domain_accuracy.png" in images
    assert [p for p in images if not os.path.isfile(os.path.join(ROOT, p))] == []


def test_the_reference_report_is_generated_from_the_reference_run_and_names_the_data_figures():
    from flatlens.report import write_report
    from flatlens.reproduce import load_run
    text = write_report(load_run(os.path.join(ROOT, "figures")))
    assert text == open(os.path.join(ROOT, "figures", "report.md"), encoding="utf-8").read()
    assert "`fig10_domain_samples.png`" in text and "`fig11_domain_accuracy.png`" in text


# --- The views section ("Views the other tools draw"): every number it quotes is read from the JSON files that
# `bash docs/views/make_views.sh results/reproduce` writes into docs/views (the README's commands' --json), so a
# README number that drifts from its file fails here. Each entry: (JSON file, the values (key paths into the file,
# or functions of it), the README text they must appear in, formatted with the values). A key path is dotted; a
# number indexes a list, a split name picks the record of that split.

VIEWS = os.path.join(ROOT, "docs", "views")


def _views_json(name):
    import json
    with open(os.path.join(VIEWS, name), encoding="utf-8") as fh:
        return json.load(fh)


def _at(obj, path):
    for part in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)] if part.lstrip("-").isdigit() else next(r for r in obj if r.get("split") == part)
        else:
            obj = obj[part]
    return obj


def _second_difference(d, i):
    r = _at(d, "records.train.result")
    h = r["alphas"][2] - r["alphas"][1]
    assert len(r["alphas"]) == 3 and abs(r["alphas"][1]) < 1e-12 and abs(h - 0.01) < 1e-12
    lo, mid, hi = r["losses"][i]
    return (lo - 2 * mid + hi) / h ** 2


def _second_difference_excess_pct(d, i):
    return 100 * (_second_difference(d, i) / _at(d, f"records.train.result.direction.eigenvalues.{i}") - 1)


_ITP = "records.{}.result."
VIEW_NUMBERS = [
    ("interpolate_fp_2bit.json",
     [lambda d: len(_at(d, "records.train.result.alphas")), "records.train.result.n_samples",
      "records.train.result.bn.batches",
      lambda d: _at(d, "records.train.result.bn.samples") // _at(d, "records.train.result.bn.batches")],
     "With the defaults ({} points, {} samples per split, BatchNorm recomputed on {} x {} training samples)"),
    ("interpolate_fp_2bit.json",
     [_ITP.format("train") + k for k in ("barrier", "barrier_ci95.0", "barrier_ci95.1", "barrier_alpha",
                                         "barrier_alpha_range.0", "barrier_alpha_range.1")],
     "the train barrier is {:.4f} nats, simultaneous 95 % CI [{:.4f}, {:.4f}], peaking at a = {:g} "
     "(the peak could lie anywhere in [{:g}, {:g}])"),
    ("interpolate_fp_2bit.json",
     [_ITP.format("test") + k for k in ("barrier", "barrier_ci95.0", "barrier_ci95.1", "barrier_alpha",
                                        "barrier_alpha_range.0", "barrier_alpha_range.1")],
     "on the test split {:.4f} [{:.4f}, {:.4f}], at a = {:g} [{:g}, {:g}]"),
    ("interpolate_fp_2bit.json", [_ITP.format("train") + "barrier", _ITP.format("test") + "barrier"],
     "with the 2-bit quantizer applied at each point it is the {:.4f} (train) and {:.4f} (test) above"),
    ("interpolate_fp_7bit.json",
     [_ITP.format("train") + k for k in ("barrier", "barrier_ci95.0", "barrier_ci95.1")]
     + [_ITP.format("test") + k for k in ("barrier", "barrier_ci95.0", "barrier_ci95.1")],
     "To **7 bit** it is {:.1e} [{:g}, {:.4f}] (train) and {:g} [{:g}, {:.1e}] (test)"),
    ("interpolate_fp_2bit_latent.json",
     [_ITP.format("train") + k for k in ("barrier", "barrier_ci95.0", "barrier_ci95.1")],
     "the 2-bit barrier is {:g} on both splits ([{:g}, {:g}])"),
    ("interpolate_fp_2bit_latent.json",
     [_ITP.format("test") + k for k in ("barrier", "barrier_ci95.0", "barrier_ci95.1")],
     "the 2-bit barrier is {:g} on both splits ([{:g}, {:g}])"),
    ("eigen_curves.json",
     [f"records.train.result.direction.eigenvalues.{i}" for i in range(3)]
     + [f"records.train.result.direction.eigenvalue_bounds.{i}" for i in range(3)]
     + ["records.train.result.direction.n_hvp"],
     "eigenvalues {:.1f}, {:.1f} and {:.1f} (residual bounds {:.2g}, {:.2g}, {:.2g}; {} HVPs)"),
    ("hessian_eig_k3.json", [f"records.train.result.main.values.{i}" for i in range(3)],
     "eigenvalues {:.1f}, {:.1f} and {:.1f}"),
    ("eigen_curves.json",
     ["records.train.result.alphas.-1", "records.train.result.losses.0.-1", "records.train.result.losses.0.0",
      "records.train.result.alphas.0", "records.train.result.losses.2.-1", "records.train.result.losses.2.0"],
     "({1:.2f} nats at a = +{0:g} along v1, {2:.2f} at {3:g}; along v3 {4:.2f} and {5:.2f})"),
    ("eigen_second_difference.json",
     [lambda d, i=i: _second_difference(d, i) for i in range(3)]
     + [lambda d, i=i: _second_difference_excess_pct(d, i) for i in range(3)],
     "is {:.0f}, {:.0f} and {:.0f}, above the eigenvalues by {:.2g}, {:.2g} and {:.2g} %"),
    ("trajectory.json",
     ["records.train.result.direction.snapshots", "records.train.result.direction.dtype",
      "records.train.objective.num_params"],
     "Here: {} {} snapshots of {:,} weights"),
    ("trajectory.json",
     [lambda d, i=i: 100 * _at(d, f"records.train.result.explained_variance_ratio.{i}") for i in range(3)],
     "the first PCA direction holds {:.1f} % of the variance, the second {:.1f} % (the third {:.1f} %)"),
    ("trajectory.json",
     ["records.train.result.path_x.0", "records.train.result.path_y.0", "records.train.result.path_x.5",
      "records.train.result.path_y.5"],
     "the path starts at ({:.2f}, {:.2f}), arcs through ({:.2f}, {:.2f})"),
    ("trajectory.json", ["records.train.result.center_loss", "records.train.objective.n_samples"],
     "(train loss {:.3f} on {} samples"),
    ("trajectory_vs_reference.json", ["records.train.result.losses.0"],
     "the train loss (BatchNorm recomputed) is {:.4f} at a = 0, 0.5 and 1"),
    ("trajectory_2threads_vs_reference.json",
     ["records.train.result.losses.0", "records.train.result.losses.-1"],
     "(train loss {:.4f} against the reference's {:.4f} on that line)"),
]


def _views_section():
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Views the other tools draw"):text.index("## The data")]
    return " ".join(section.split())


@pytest.mark.parametrize("name,values,template", VIEW_NUMBERS, ids=[f"{n}:{t[:40]}" for n, _, t in VIEW_NUMBERS])
def test_readme_view_numbers_are_the_committed_jsons(name, values, template):
    d = _views_json(name)
    expected = " ".join(template.format(*[v(d) if callable(v) else _at(d, v) for v in values]).split())
    assert expected in _views_section(), f"the README's views section should read: {expected!r} (from {name})"


def test_the_views_jsons_are_one_run_of_the_readme_commands():
    """The quoted facts that are no single number: the views measure one reference checkpoint; the retrained model's
    loss is the same float along the line to it; the directions re-imported from their file give every value
    equal, and the 7-bit model measured along the file records its hash."""
    fp32 = _at(_views_json("eigen_curves.json"), "records.train.checkpoint_sha256")
    for name, path in [("eigen_second_difference.json", "records.train.checkpoint_sha256"),
                       ("hessian_eig_k3.json", "records.train.checkpoint_sha256"),
                       ("directions_saved.json", "records.train.checkpoint_sha256"),
                       ("directions_reimported.json", "records.train.checkpoint_sha256"),
                       ("interpolate_fp_2bit.json", "records.train.result.endpoints.a.sha256"),
                       ("interpolate_fp_2bit_latent.json", "records.train.result.endpoints.a.sha256"),
                       ("interpolate_fp_7bit.json", "records.train.result.endpoints.a.sha256"),
                       ("trajectory_vs_reference.json", "records.train.result.endpoints.b.sha256")]:
        assert _at(_views_json(name), path) == fp32, name
    assert _at(_views_json("interpolate_fp_2bit_latent.json"), "records.train.result.endpoints.b.weights") != \
        _at(_views_json("interpolate_fp_2bit.json"), "records.train.result.endpoints.b.weights")
    ref = _at(_views_json("trajectory_vs_reference.json"), "records.train.result")
    assert ref["alphas"] == [0.0, 0.5, 1.0] and len(set(ref["losses"])) == 1
    two = _at(_views_json("trajectory_2threads_vs_reference.json"), "records.train.result")
    assert two["losses"][-1] == ref["losses"][0] and two["losses"][0] != ref["losses"][0]
    saved, back, q7 = (_at(_views_json(f"directions_{n}.json"), "records.train.result")
                       for n in ("saved", "reimported", "q7"))
    assert back["losses"] == saved["losses"] and back["direction"]["count"] == 4 == saved["n_directions"]
    assert q7["direction"]["sha256"] == back["direction"]["sha256"]
    assert " ".join("four filter-normalized directions re-imported gave identical curves (every value equal), and "
                    "`q7_s0` measured along the same file recorded the same hash".split()) in _views_section()


def test_make_views_parses_and_writes_every_committed_view():
    script = os.path.join(VIEWS, "make_views.sh")
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = open(script, encoding="utf-8").read()
    for f in sorted(os.listdir(VIEWS)):
        stem, ext = os.path.splitext(f)
        if ext in (".json", ".png") and not f.startswith("quick_"):
            assert f"--{ext[1:].replace('png', 'plot')} {f}" in text, f"make_views.sh does not write {f}"
            assert f in _views_section(), f"the README's views section does not name {f}"
