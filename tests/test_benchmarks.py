"""The benchmark scripts cannot rot: the GPU suite's `--tiny --device cpu` mode runs every section's code path
here and writes a JSON with every field (the full run needs a lent GPU)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_suite_tiny_on_cpu_writes_every_field(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "gpu_suite.json"
    # no wall-clock limit a loaded machine can trip: the hang guard is 10x the idle time (about 40 s here)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_suite.py"), "--tiny", "--device", "cpu",
                        "--out", str(out), "--budget", "100000"], capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert set(d) >= {"machine", "device_name", "tiny", "device", "perturbation", "precision", "hvp", "hessian",
                      "sharding", "seconds"}
    assert set(d["device"]["matmul_flops_per_second"]) == {"fp32", "tf32", "bf16"}
    for model in ("digits_cnn", "resnet18"):
        p = d["perturbation"][model]
        assert set(p["evals_per_second"]) == {"a_loss_landscape_style", "b_cached_loop", "c_flatlens_auto"}
        assert p["fraction_of_matmul_rate"] > 0 and p["c_over_a"] > 0
    assert d["perturbation"]["digits_cnn"]["d_flatlens_compiled"] == {"run": False}  # tiny: no compilation
    assert d["fashion_paired"]["run"] is False and "accelerator" in d["fashion_paired"]["reason"]
    assert d["perturbation"]["resnet18"]["d_flatlens_compiled"] == {"run": False}  # tiny: not compiled
    assert set(d["precision"]) == {"fp32", "tf32", "bf16"}
    assert d["precision"]["fp32"]["max_abs_loss_error_vs_fp32"] == 0.0
    h = d["hvp"]
    assert h["hvp_over_grad"] > 0 and h["batched_speedup"] > 0 and h["max_abs_difference"] < 1e-3
    assert h["slq"]["lockstep_speedup"] > 0 and h["slq"]["max_abs_node_difference"] < 1e-3
    assert {"a_top_eigenvalue", "e_trace_to_2pct_ci", "f_hvp_vs_gradient"} <= set(d["hessian"])
    assert d["hessian"]["a_top_eigenvalue"]["flatlens_gap_bound"]["n_hvp"] > 0
    assert d["sharding"]["run"] is False and "GPU" in d["sharding"]["reason"]
    assert "seconds" in d and "_t0" not in d and not (tmp_path / "gpu_suite.json.partial").exists()


def test_gpu_suite_keeps_every_section_when_one_fails_or_the_budget_runs_out(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_suite
    import time
    out = str(tmp_path / "s.json")
    res = {"_t0": time.perf_counter()}

    def boom():
        raise RuntimeError("CUDA out of memory")

    gpu_suite._section(res, out, 100.0, ["perturbation", "resnet18"], boom)
    gpu_suite._section(res, out, 100.0, ["hvp"], lambda: {"hvp_over_grad": 1.5})
    res["_t0"] -= 200  # as if 200 s had passed
    gpu_suite._section(res, out, 100.0, ["sharding"], lambda: {"run": True})
    d = json.loads(open(out).read())
    assert d["perturbation"]["resnet18"] == {"run": False, "error": "RuntimeError: CUDA out of memory"}
    assert d["hvp"] == {"hvp_over_grad": 1.5} and d["seconds"] >= 200
    assert d["sharding"]["run"] is False and "budget" in d["sharding"]["reason"]


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_gpu_suite_fashion_section_runs_on_every_folder_layout_the_loader_reads(tmp_path, monkeypatch, layout):
    """The section's file check is the loader's own (flatlens.data.fashion.locate): the four idx files in the folder
    itself or under torchvision's FashionMNIST/raw, plain or .gz, are run, not skipped; a folder missing one is
    skipped with the loader's one-line reason naming it."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import types

    import gpu_suite
    import flatlens.reproduce
    from flatlens.data.fashion import FILES
    root = tmp_path / "fm"
    where = root if layout == "flat" else root / "FashionMNIST" / "raw"
    where.mkdir(parents=True)
    stems = [s for pair in FILES.values() for s in pair]
    for i, stem in enumerate(stems):
        (where / (stem + (".gz" if i % 2 else ""))).write_bytes(b"")  # the check reads no byte; the loader would
    calls = []

    def fake_run(out, *, plan, **kw):  # the training itself is the lent GPU's job; here: was it reached, on what
        calls.append(plan.data_root)
        return types.SimpleNamespace(models=[], analysis=types.SimpleNamespace(claims=[]))

    monkeypatch.setattr(flatlens.reproduce, "run", fake_run)
    res = gpu_suite.fashion_paired_section("cuda", True, str(root), str(tmp_path / "out"))
    assert calls == [str(root)] and res.get("run") is not False, res
    (where / (stems[-1] + ".gz")).unlink()  # t10k labels gone: skipped, the reason names the file
    res = gpu_suite.fashion_paired_section("cuda", True, str(root), str(tmp_path / "out"))
    assert res["run"] is False and stems[-1] in res["reason"] and "\n" not in res["reason"] and len(calls) == 1


@pytest.mark.slow
def test_ggn_vs_curvlinops_tiny_agrees_with_curvlinops_and_the_exact_trace(tmp_path):
    """benchmarks/ggn_vs_curvlinops.py cannot rot: its --tiny mode runs every section (matvec, block of 8, the
    trace against the exact one) in seconds, and the two libraries' GGN products agree."""
    pytest.importorskip("curvlinops", reason="curvlinops-for-pytorch is not installed (pip install -e '.[test]')")
    out = tmp_path / "ggn.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ggn_vs_curvlinops.py"), "--tiny",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["tiny"] is True and d["batches"] == [64, 64] and d["a_matvec"]["repeats"] == 1
    assert d["a_matvec"]["max_rel_difference"] < 1e-5  # float32: the same GGN product from both libraries
    assert d["b_block_of_8"]["flatlens_seconds"] > 0 and d["b_block_of_8"]["curvlinops_seconds"] > 0
    c = d["c_trace_2pct"]
    assert c["exact"] > 0 and len(c["seeds"]) == 1
    assert c["flatlens_max_abs_rel_error"] < 0.05 and c["curvlinops_max_abs_rel_error"] < 0.2
