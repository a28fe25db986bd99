"""`flatlens reproduce --quick` end to end (the CI smoke test), the report, the figures, and resumption."""
import json
import os

import matplotlib
import pytest

from flatlens.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    assert main(["reproduce", "--quick", "--out", str(out), "--quiet"]) == 0
    return out


def test_outputs_exist(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    assert len(res["models"]) == 5 and {m["config"] for m in res["models"]} == {"fp32", "q8", "q7", "q4", "q2"}
    m = res["models"][0]
    assert set(m["measurements"]) == {"train", "test"}
    assert {"hessian-eig", "hessian-trace", "hessian-density", "flatness", "curve", "sharpness", "qnoise"} <= set(
        m["measurements"]["train"])
    assert res["eoq"]["75"]["ensemble"]
    report = (run_dir / "report.md").read_text()
    for section in ("## Accuracy", "## Curvature and sharpness, train split", "## Curvature and sharpness, test split",
                    "Local flatness", "quantization-noise test", "Which of the paper's claims held here"):
        assert section in report
    assert "EoQ" in report and "tr(H) ± 95% CI" in report


def test_rerun_resumes_from_checkpoints_and_cache(run_dir):
    ck = run_dir / "checkpoints" / "test75" / "q7_s0.pt"
    mtime = os.path.getmtime(ck)
    assert main(["reproduce", "--quick", "--out", str(run_dir), "--quiet", "--jobs", "1"]) == 0
    res = json.loads((run_dir / "results.json").read_text())
    assert os.path.getmtime(ck) == mtime
    assert res["cache"]["misses"] == 0 and res["cache"]["hits"] > 0
    assert max(res["seconds"]["train_per_model"]) < 1.0


def test_figures_have_expected_axes(run_dir, tmp_path):
    from flatlens.plots import FIGURES
    res = json.loads((run_dir / "results.json").read_text())
    figs = {name: fn(res) for name, fn in FIGURES.items()}
    f1 = figs["fig1_local_flatness"].axes
    assert [a.get_title() for a in f1[:2]] == ["train flatness, test domain 75°", "test flatness, test domain 75°"]
    assert "radius" in f1[0].get_xlabel() and "loss increase" in f1[0].get_ylabel()
    assert len(f1[0].get_lines()) == 5
    f2 = figs["fig2_eigenvalue_trace"].axes
    assert "eigenvalue" in f2[0].get_ylabel() and "trace" in f2[1].get_ylabel().lower()
    assert figs["fig3_spectral_density"].axes[0].get_yscale() == "log"
    assert "filter-normalized" in figs["fig4_filter_normalized_curves"].axes[0].get_xlabel()
    assert len(figs["fig5_surfaces_2d"].axes) == 6  # five panels and a colour bar
    assert figs["fig5b_surface_3d"].axes[0].name == "3d"
    f6 = figs["fig6_quantization_noise"].axes[0]
    assert "predicted" in f6.get_xlabel() and "measured" in f6.get_ylabel()
    assert any(l.get_label() == "y = x" for l in f6.get_lines())
    f7 = figs["fig7_accuracy_vs_bits"].axes
    assert f7[0].get_xlabel() == "weight bits" and f7[1].get_xlabel() == "training step"
    assert "KL" in figs["fig8_quantization_error"].axes[0].get_title()
    for f in figs.values():
        matplotlib.pyplot.close(f)
    out = tmp_path / "figs"
    assert main(["figures", "--results", str(run_dir), "--out", str(out), "--quiet"]) == 0
    files = sorted(os.listdir(out))
    assert len(files) == 2 * len(FIGURES) and all(os.path.getsize(out / f) > 1000 for f in files)


def test_figures_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["figures", "--results", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "reproduce" in capsys.readouterr().err
