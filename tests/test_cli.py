import os
import pickle
import subprocess
import sys

import pytest
import torch

from flatlens.cli import main
from flatlens.data import rotated_digits
from flatlens.train import TrainConfig, train

DATA = rotated_digits()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    out = {}
    for name, bits, dom in (("fp", None, "75"), ("q4", 4, "75"), ("other", None, "0")):
        p = d / f"{name}.pt"
        train(TrainConfig(steps=40, eval_every=20, quant_start=20, bits=bits, test_domains=[dom],
                          arch_kwargs={"width": 8}), str(p), quiet=True, data=DATA)
        out[name] = str(p)
    return out


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_CLI",))


def _bad_files(tmp_path, good):
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(good, "rb").read()[:2000])
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    evil_zip = tmp_path / "evil_zip.pt"
    torch.save({"x": Evil()}, evil_zip)
    return [str(tmp_path / "missing.pt"), str(text), str(trunc), str(evil), str(evil_zip)]


def test_version_and_help():
    r = subprocess.run([sys.executable, "-m", "flatlens", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("flatlens ")
    r = subprocess.run([sys.executable, "-m", "flatlens", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compare" in r.stdout and "reproduce" in r.stdout


@pytest.mark.parametrize("command", ["evaluate", "hessian", "flatness", "landscape", "compare"])
def test_bad_files_give_one_line_and_exit_2(command, tmp_path, ckpts, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in _bad_files(tmp_path, ckpts["fp"]):
        args = [command, bad] + (["--quiet"] if command != "compare" else [ckpts["fp"], "--quiet"])
        assert main(args) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("flatlens: error:"), err
    assert not (tmp_path / "PWNED_CLI").exists()


def test_usage_errors_exit_2_without_traceback():
    r = subprocess.run([sys.executable, "-m", "flatlens", "flatness"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_train_evaluate_hessian_landscape_flatness(tmp_path, ckpts, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--test-domain", "75", "--bits", "4", "--quant-start", "10", "--steps", "20",
                 "--eval-every", "10", "--width", "8", "--out", str(out), "--quiet"]) == 0
    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "out-of-domain test" in text and "4-bit QAT" in text
    j = tmp_path / "h.json"
    assert main(["hessian", ckpts["q4"], "--samples", "64", "--metric", "all", "--density-iter", "10",
                 "--json", str(j), "--quiet"]) == 0
    from flatlens.pipeline import MeasurementRun
    h = MeasurementRun.from_json(j)
    assert h.weights.startswith("deployed 4-bit")
    assert {r.metric for r in h.records} == {"hessian-eig", "hessian-trace", "hessian-density", "hessian-diag",
                                             "ggn-eig", "ggn-trace", "fisher-trace", "ggn-density"}
    ggn = next(r for r in h.records if r.metric == "ggn-eig")
    assert ggn.result.main.objective["curvature"]["operator"] == "ggn" and ggn.row("LA1").value > 0
    eig = next(r for r in h.records if r.metric == "hessian-eig")
    assert eig.row("LA1").interval_kind == "bound" and eig.result.main.bounds
    npz = tmp_path / "s.npz"
    assert main(["landscape", ckpts["fp"], "--dim", "2", "--points", "5", "--samples", "64", "--npz", str(npz),
                 "--json", str(tmp_path / "l.json"), "--quiet"]) == 0
    import numpy as np
    arr = np.load(npz)
    assert arr["train_losses"].shape == (5, 5) and 0.0 in arr["xs"]
    fj = tmp_path / "f.json"
    assert main(["flatness", ckpts["fp"], "--radii", "0", "1", "--directions", "5", "--samples", "64",
                 "--json", str(fj), "--resume-dir", str(tmp_path / "chunks"), "--quiet"]) == 0
    f = MeasurementRun.from_json(fj)
    assert {r.split for r in f.records} == {"train", "test"}
    assert [r.key for r in f.records[0].rows] == ["r=1"] and len(f.records[0].result.ci95) == 2
    assert main(["flatness", ckpts["fp"], "--radii", "-1", "--quiet"]) == 2


def test_bottom_flag_adds_the_most_negative_eigenvalue_to_the_top_one(tmp_path, ckpts):
    from flatlens.pipeline import MeasurementRun
    runs = {}
    for extra in ([], ["--bottom"]):
        j = tmp_path / f"eig{len(extra)}.json"
        assert main(["hessian", ckpts["fp"], "--samples", "32", "--metric", "hessian-eig", "--split", "train",
                     "--max-hvp", "60", "--json", str(j), "--quiet", *extra]) == 0
        runs[len(extra)] = MeasurementRun.from_json(j).records[0].result
    assert runs[0].bottom is None and runs[0].main.which == "LA"
    assert runs[1].bottom is not None and runs[1].bottom.which == "SA"
    assert runs[1].main.values == runs[0].main.values and runs[1].bottom.values[0] < runs[1].main.values[0]


def test_device_auto_and_a_shared_flag_are_judged_by_the_metrics_asked_for(ckpts, capsys):
    # "auto" is resolved once before any work (it once reached torch.device("auto") deep in measure/ensemble)
    assert main(["ensemble", ckpts["fp"], ckpts["q4"], "--device", "auto", "--quiet"]) == 0
    assert main(["hessian", ckpts["fp"], "--metric", "hessian-trace", "--device", "auto", "--samples", "16",
                 "--split", "train", "--quiet"]) == 0
    # --max-hvp is shared: 1 is valid for the eigenvalue (min 1), not for the trace (min 2)
    base = ["hessian", ckpts["fp"], "--samples", "16", "--split", "train", "--max-hvp", "1", "--quiet"]
    assert main(base + ["--metric", "hessian-eig"]) == 0
    assert main(base + ["--metric", "hessian-trace"]) == 2
    assert "hessian-trace: --max-hvp must be a finite integer in [2, inf); got 1" in capsys.readouterr().err
    # what one setting needs of another is checked before any work too, by the estimator's own rule
    for extra, why in ((["--eig-method", "power"], "the power method has none"),
                       (["--backend", "pyhessian"], "pyhessian backend reports no bound")):
        assert main(base[:-1] + ["--metric", "hessian-eig", "--eig-bound", "gap", *extra]) == 2
        err = capsys.readouterr().err
        assert "hessian-eig: the gap bound needs" in err and why in err and "measurement/s" not in err


def test_ensemble_cli(ckpts, capsys):
    assert main(["ensemble", ckpts["fp"], ckpts["q4"], "--split", "both"]) == 0
    assert "ensemble" in capsys.readouterr().out
