import json
import numpy as np
import pytest
import torch
from torch import nn

from flatlens import FlatlensError, Objective, hessian, toys
from nets import image_data, tiny_cnn, tiny_mlp, vector_data

SPREAD = np.concatenate([np.logspace(-3, 3, 195), -np.logspace(-3, 1, 5)])  # 200 dims, a few negative


@pytest.fixture(scope="module")
def spread():
    return toys.quadratic(SPREAD, seed=0)


def test_lanczos_top5_and_most_negative_on_spread_quadratic(spread):
    exact = np.sort(SPREAD)
    top = hessian.top_eigenvalues(spread, 5, which="LA", tol=1e-10)
    assert top.converged and top.n_hvp > 0
    np.testing.assert_allclose(top.values, exact[::-1][:5], rtol=1e-6)
    low = hessian.top_eigenvalues(spread, 2, which="SA", tol=1e-10)
    np.testing.assert_allclose(low.values, exact[:2], rtol=1e-6)
    lm = hessian.top_eigenvalues(spread, 1, which="LM", tol=1e-10)
    assert lm.values[0] == pytest.approx(1000.0, rel=1e-6)


def test_power_iteration_with_deflation_finds_top_and_negative():
    lam = np.array([10.0, 5.0, 2.0, 1.0, 0.5, -20.0, 0.1, 0.2])
    obj = toys.quadratic(lam, seed=2)
    la = hessian.top_eigenvalues(obj, 2, method="power", which="LA", tol=1e-12, max_hvp=20000)
    np.testing.assert_allclose(la.values, [10.0, 5.0], rtol=1e-5)
    sa = hessian.top_eigenvalues(obj, 1, method="power", which="SA", tol=1e-12, max_hvp=20000)
    assert sa.values[0] == pytest.approx(-20.0, rel=1e-5)


def test_trace_ci_covers_exact_trace_in_at_least_90_percent_of_50_seeds():
    lam = np.concatenate([np.logspace(-1, 2, 190), -np.logspace(-1, 0.5, 10)])
    obj = toys.quadratic(lam, seed=3)
    exact = float(lam.sum())
    for method in ("hutch++", "hutchinson"):
        covered = 0
        for seed in range(50):
            t = hessian.trace(obj, method=method, rtol=0.05, seed=seed, per_layer=False)
            assert t.converged
            covered += t.ci95[0] <= exact <= t.ci95[1]
        assert covered >= 45, (method, covered)


def test_hutchpp_needs_fewer_hvps_than_hutchinson_on_dominated_spectrum():
    lam = np.concatenate([[1000.0, 800.0, 600.0, 500.0, 400.0], np.ones(195)])
    obj = toys.quadratic(lam, seed=1)
    pp = hessian.trace(obj, method="hutch++", rtol=0.02, seed=0)
    hu = hessian.trace(obj, method="hutchinson", rtol=0.02, seed=0, max_hvp=5000)
    assert pp.converged and hu.converged
    assert pp.n_hvp < hu.n_hvp / 5
    assert pp.ci95[0] <= lam.sum() <= pp.ci95[1]


def test_trace_stops_on_ci_width_not_running_mean():
    obj = toys.quadratic(np.linspace(-1, 5, 100), seed=4)
    t = hessian.trace(obj, method="hutchinson", rtol=0.02, seed=0)
    half = (t.ci95[1] - t.ci95[0]) / 2
    assert half <= 0.02 * abs(t.value) + 1e-12 and t.n_probes >= 10


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_stops_at_the_same_probe_whatever_the_hvp_blocks(method, monkeypatch):
    # on an accelerator probes go through hvp_many 8 at a time; the rule is still read after every probe, so a
    # GPU run and a CPU run of one seed stop at the same probe with the same estimate (blocks only pay for more)
    obj = toys.quadratic(np.linspace(-1, 5, 100), seed=4)
    one = hessian.trace(obj, method=method, rtol=0.03, seed=1)
    monkeypatch.setattr(type(obj.hessian_op), "batched_hvps_pay", lambda self: True)
    monkeypatch.setattr(type(obj.hessian_op), "hvp_block", property(lambda self: 8))
    blocks = hessian.trace(obj, method=method, rtol=0.03, seed=1)
    assert one.converged and blocks.converged and one.n_probes % 8 != 0  # the stop falls inside a block
    assert blocks.n_probes == one.n_probes and blocks.value == pytest.approx(one.value, rel=1e-12)
    assert blocks.ci95 == pytest.approx(one.ci95, rel=1e-12)
    assert one.n_hvp <= blocks.n_hvp < one.n_hvp + 8


def test_density_integrates_to_one_and_its_mean_is_trace_over_d():
    lam = np.linspace(0.0, 10.0, 200)
    obj = toys.quadratic(lam, seed=5)
    d = hessian.density(obj, n_iter=30, n_runs=20, seed=0)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-9)
    means = [np.dot(w, v) for w, v in zip(d.weights, d.nodes)]
    se = np.std(means, ddof=1) / np.sqrt(len(means))
    assert abs(d.mean - lam.mean()) < 4 * se + 1e-9
    grid_mean = np.trapezoid(np.asarray(d.grid) * np.asarray(d.density), d.grid)
    assert grid_mean == pytest.approx(d.mean, rel=1e-3)


def test_slq_runs_in_lockstep_blocks_equal_runs_one_after_another():
    # the starts advance together, one batched HVP per step (blocks of hvp_block = 8 and a rest of 3 here)
    from flatlens.hessian.lanczos import lanczos_lockstep
    obj = Objective(tiny_mlp(), nn.CrossEntropyLoss(), vector_data(40))
    one_by_one = hessian.density(obj, n_iter=12, n_runs=11, seed=3, batched=False)
    n0 = obj.n_hvp
    lockstep = hessian.density(obj, n_iter=12, n_runs=11, seed=3, batched=True)
    assert obj.n_hvp - n0 == one_by_one.n_hvp == lockstep.n_hvp == 11 * 12
    for a, b in zip(lockstep.nodes + lockstep.weights, one_by_one.nodes + one_by_one.weights):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # a start inside an invariant subspace ends its run early without ending the others
    toy = toys.quadratic(np.array([3.0, 3.0, 3.0, 1.0, 1.0]), seed=0)
    runs = lanczos_lockstep(toy, torch.stack([toy.eigenvectors[:, 0], torch.ones(5, dtype=torch.float64)]),
                                    5, batched=True)
    assert len(runs[0].alpha) == 1 and runs[0].alpha[0] == pytest.approx(3.0)
    assert len(runs[1].alpha) == 2 and sorted(np.linalg.eigvalsh(
        np.diag(runs[1].alpha) + np.diag(runs[1].beta, 1) + np.diag(runs[1].beta, -1))) == pytest.approx([1.0, 3.0])
    with pytest.raises(FlatlensError, match="batched"):
        hessian.density(obj, batched="yes")


def test_lanczos_basis_grows_in_blocks_that_never_move_and_stays_orthonormal():
    from flatlens.hessian.lanczos import LanczosRun
    obj = toys.quadratic(SPREAD, seed=3)
    v0 = torch.ones(obj.num_params, dtype=torch.float64)
    runs = [LanczosRun(v0, block=b) for b in (64, 3)]  # one block, or eleven as the run goes on
    where = {}
    for _ in range(30):
        assert all(r.advance(obj.hvp(r.v)) for r in runs)
        for j in range(len(runs[1])):
            where.setdefault(j, runs[1].row(j).data_ptr())
            assert runs[1].row(j).data_ptr() == where[j]  # a row, once written, never moves
    a, b = runs
    assert len(a) == len(b) == 30 and a.V.shape == (30, obj.num_params)
    np.testing.assert_allclose(a.alpha, b.alpha, rtol=1e-12)  # the blocks change only float summation order
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-10)
    assert torch.allclose(b.V @ b.V.T, torch.eye(30, dtype=torch.float64), atol=1e-12)


def test_linear_regression_hvps_match_exact_hessian():
    obj = toys.linear_regression(64, 12, seed=0, batch_size=20)
    H = torch.stack([obj.hvp(e) for e in torch.eye(12, dtype=torch.float64)])
    assert torch.allclose(H, obj.hessian, rtol=1e-10, atol=1e-12)
    top = hessian.top_eigenvalues(obj, 3, tol=1e-12)
    np.testing.assert_allclose(top.values, obj.eigenvalues[:3].numpy(), rtol=1e-8)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_small_nets_against_dense_hessian(net, dense):
    if net == "mlp":
        obj = Objective(tiny_mlp(), nn.CrossEntropyLoss(), vector_data())
    else:
        obj = Objective(tiny_cnn(), nn.CrossEntropyLoss(), image_data(), bn="eval")
    H = dense(obj)
    w = torch.linalg.eigvalsh(H).numpy()
    top = hessian.top_eigenvalues(obj, 3, tol=1e-12)
    np.testing.assert_allclose(top.values, w[::-1][:3], rtol=1e-6)
    low = hessian.top_eigenvalues(obj, 1, which="SA", tol=1e-12)
    np.testing.assert_allclose(low.values, w[:1], rtol=1e-6, atol=1e-9)
    exact = float(torch.trace(H))
    t = hessian.trace(obj, rtol=0.02, seed=0)
    assert t.ci95[0] <= exact <= t.ci95[1]
    assert sum(v["value"] for v in t.per_layer.values()) == pytest.approx(t.value, rel=1e-9)
    diag = torch.diagonal(H)
    for name, a, b in zip(obj.names, obj.offsets[:-1], obj.offsets[1:]):
        lt = t.per_layer[name]  # several layers at once: 4 standard errors per layer
        assert abs(lt["value"] - float(diag[a:b].sum())) <= 4 * lt["stderr"] + 1e-9, name
    dg = hessian.diagonal(obj, n_probes=400, seed=1)
    z = (np.asarray(dg.values) - diag.numpy()) / np.maximum(np.asarray(dg.stderr), 1e-12)
    assert np.mean(np.abs(z) < 1.96) > 0.85  # 95 % intervals, per entry
    assert np.all(np.abs(z)[np.asarray(dg.stderr) > 0] < 6)


def test_one_tensor_pair_equals_unequal_batches_for_estimators():
    x, y = vector_data(30)
    a = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y))
    b = Objective(tiny_mlp(), nn.CrossEntropyLoss(), [(x[:4], y[:4]), (x[4:20], y[4:20]), (x[20:], y[20:])])
    ta, tb = hessian.trace(a, seed=3), hessian.trace(b, seed=3)
    assert ta.value == pytest.approx(tb.value, rel=1e-9) and ta.n_hvp == tb.n_hvp
    ea, eb = hessian.top_eigenvalues(a, 2, tol=1e-10), hessian.top_eigenvalues(b, 2, tol=1e-10)
    np.testing.assert_allclose(ea.values, eb.values, rtol=1e-9)


def test_same_seed_same_numbers():
    obj = toys.quadratic(np.linspace(0.1, 3, 50), seed=0)
    assert hessian.trace(obj, seed=7).value == hessian.trace(obj, seed=7).value
    assert hessian.density(obj, seed=2).density == hessian.density(obj, seed=2).density


def test_pyhessian_backend_agrees_with_flatlens_on_small_net():
    obj = Objective(tiny_mlp(dtype=torch.float32), nn.CrossEntropyLoss(), vector_data(dtype=torch.float32))
    ours = hessian.top_eigenvalues(obj, 1, tol=1e-8)
    theirs = hessian.top_eigenvalues(obj, 1, backend="pyhessian", tol=1e-6, max_hvp=1000)
    assert theirs.backend == "pyhessian"
    with pytest.raises(FlatlensError, match="largest-magnitude"):  # its power iteration cannot find the bottom
        hessian.top_eigenvalues(obj, 1, which="SA", backend="pyhessian")
    assert theirs.values[0] == pytest.approx(ours.values[0], rel=1e-3)
    t_pyh = hessian.trace(obj, backend="pyhessian", n_probes=400, seed=0)
    t_ours = hessian.trace(obj, rtol=0.01, seed=0)
    assert abs(t_pyh.value - t_ours.value) < 4 * np.hypot(t_pyh.stderr, t_ours.stderr)


def test_results_serialize_to_json_and_back():
    from flatlens.results import result_from_dict
    import json
    obj = toys.quadratic(np.linspace(0.1, 3, 20), seed=0)
    for r in (hessian.trace(obj), hessian.top_eigenvalues(obj, 2), hessian.density(obj, n_iter=5, n_runs=2)):
        back = result_from_dict(json.loads(r.to_json()))
        assert back.to_dict() == r.to_dict()


def test_bad_input_errors():
    obj = toys.quadratic([1.0, 2.0, 3.0])
    with pytest.raises(FlatlensError, match="exceeds"):
        hessian.top_eigenvalues(obj, 4)
    with pytest.raises(FlatlensError, match="which"):
        hessian.top_eigenvalues(obj, 1, which="XX")
    with pytest.raises(FlatlensError, match="method"):
        hessian.trace(obj, method="xtrace")


@pytest.mark.parametrize("which,expect", [("LA", [5.0, 2.0, 1.0]), ("SA", [-3.0, -1.0, 0.1])])
def test_power_method_returns_the_k_extreme_algebraic_eigenvalues_of_an_indefinite_spectrum(which, expect):
    # after deflating 5, the largest *magnitude* left is -3: unshifted power iteration returned [5, -3]
    lam = np.array([5.0, 2.0, 1.0, 0.5, -3.0, -1.0, 0.1, 0.2])
    obj = toys.quadratic(lam, seed=4)
    r = hessian.top_eigenvalues(obj, 3, which=which, method="power", tol=1e-13, max_hvp=50000)
    assert r.converged
    np.testing.assert_allclose(r.values, expect, rtol=1e-4, atol=1e-4)


def test_eigenvalues_carry_residual_bounds_that_hold():
    obj = toys.quadratic(SPREAD, seed=0)
    exact = np.sort(SPREAD)[::-1]
    for tol in (1e-2, 1e-6):
        r = hessian.top_eigenvalues(obj, 2, tol=tol)
        assert len(r.bounds) == 2
        for v, b in zip(r.values, r.bounds):
            assert np.min(np.abs(exact - v)) <= b + 1e-9


def test_scaled_hessian_is_s_h_s_and_its_trace_is_the_step_weighted_diagonal():
    from flatlens.hessian.scaled import ScaledHessian
    obj = toys.quadratic(SPREAD[:60], seed=2)
    s = torch.linspace(0.1, 2.0, 60, dtype=torch.float64)
    op = ScaledHessian(obj, s)
    dense = torch.stack([op.hvp(e) for e in torch.eye(60, dtype=torch.float64)])
    assert torch.allclose(dense, s[:, None] * obj.hessian * s[None, :], rtol=1e-10, atol=1e-10)
    exact = float((s ** 2 * torch.diagonal(obj.hessian)).sum())
    t = hessian.trace(op, rtol=0.01, seed=0, per_layer=False)
    assert t.ci95[0] <= exact <= t.ci95[1] and op.describe()["operator"].startswith("S H S")


def test_limits_mean_what_they_say():
    obj = toys.quadratic(SPREAD, seed=0)
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(FlatlensError, match="tol"):
            hessian.top_eigenvalues(obj, 1, tol=bad)
    with pytest.raises(FlatlensError, match="max_hvp"):
        hessian.top_eigenvalues(obj, 1, max_hvp=0)
    r = hessian.top_eigenvalues(obj, 1, max_hvp=1)  # once ran 21 HVPs
    assert r.n_hvp == 1 + 1 and not r.converged and r.stopped_on == "budget"
    r = hessian.top_eigenvalues(obj, 2, tol=1e-12, max_hvp=60)
    assert r.n_hvp <= 60 + 2  # the budget, plus one HVP per eigenvalue for its residual bound
    for bad in (float("nan"), 0.0, -0.1):
        with pytest.raises(FlatlensError, match="rtol"):
            hessian.trace(obj, rtol=bad)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(FlatlensError, match="sigma"):
            hessian.density(obj, n_iter=5, n_runs=2, sigma=bad)


@pytest.mark.parametrize("k", [1, 3])
def test_lanczos_stops_at_the_accuracy_asked_for_and_the_bound_holds(k):
    # a digits-like spectrum: a few large outliers over a bulk near zero, some negative
    g = np.random.default_rng(0)
    lam = np.concatenate([[900.0, 500.0, 300.0, 120.0], g.uniform(-2, 40, 396)])
    obj = toys.quadratic(lam, seed=1)
    exact = np.sort(lam)[::-1]
    used = []
    for tol in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10):
        r = hessian.top_eigenvalues(obj, k, tol=tol)
        assert r.converged and r.stopped_on in ("ritz residual", "invariant subspace")
        for v, b, e in zip(r.values, r.bounds, exact[:k]):
            assert abs(v - e) <= b * (1 + 1e-6) + 1e-9, (tol, v, e, b)  # the value is within its bound
            assert b <= tol * abs(v) * 1.01 + 1e-9                      # and the bound within what was asked
        used.append(r.n_hvp)
    assert used == sorted(used) and used[0] < used[-1], used  # looser tolerances cost fewer HVPs


def test_gap_bound_holds_on_random_spectra_and_never_costs_more_hvps():
    # outliers over a bulk, as a trained network's Hessian: the Kato-Temple bound r^2 / gap, with the gap read off
    # the Ritz values only once the neighbours have converged, held in every case (a tenth instead of a hundredth
    # let 7 of 216 cases through with a bound too small)
    saved, seen_gap = [], False
    for seed in range(6):
        g = np.random.default_rng(seed)
        n_out = int(g.integers(2, 8))
        lam = np.concatenate([np.sort(g.uniform(50, 1000, n_out)), g.uniform(-2, 40, 300 - n_out)])
        obj = toys.quadratic(lam, seed=seed)
        exact = np.sort(lam)[::-1]
        for k in (1, 3):
            for tol in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10):
                res = hessian.top_eigenvalues(obj, k, tol=tol, seed=seed, bound="residual")
                gap = hessian.top_eigenvalues(obj, k, tol=tol, seed=seed, bound="gap")
                assert gap.converged and gap.bound == "gap" and len(gap.gaps) == k
                for v, b, r, e in zip(gap.values, gap.bounds, gap.residual_bounds, exact[:k]):
                    assert abs(v - e) <= b * (1 + 1e-6) + 1e-9, (seed, k, tol, v, e, b)
                    assert b <= r * (1 + 1e-12)  # never looser than the residual bound it refines
                    assert b <= tol * abs(v) * 1.01 + 1e-9
                seen_gap |= gap.stopped_on == "ritz residual^2/gap"
                saved.append(res.n_hvp - gap.n_hvp)
                assert res.bound == "residual" and res.bounds == res.residual_bounds
    assert seen_gap and min(saved) >= 0 and max(saved) >= 3, saved


def test_a_gap_is_withheld_while_the_ritz_value_below_has_not_converged():
    from flatlens.hessian.eigen import _gaps
    # 7 Lanczos steps on {900, 500, 300, 120, bulk <= 40}: 120 unseen, the Ritz value below 300 at 45 +- 33
    theta = np.array([900.0, 500.0, 299.999, 44.709])
    assert np.isnan(_gaps(theta, np.array([0.03, 0.04, 0.42, 33.3]), [2])[0])
    assert _gaps(theta, np.array([0.03, 0.04, 0.42, 0.001]), [2])[0] == pytest.approx(200.001 - 0.04)
    assert np.isnan(_gaps(np.array([3.0]), np.array([0.1]), [0])[0])  # one Ritz value: no gap at all


def test_gap_bound_is_refused_where_there_is_no_ritz_gap():
    obj = toys.quadratic(SPREAD, seed=0)
    with pytest.raises(FlatlensError, match="bound must be one of"):
        hessian.top_eigenvalues(obj, 1, bound="kato")
    with pytest.raises(FlatlensError, match="power method"):
        hessian.top_eigenvalues(obj, 1, method="power", bound="gap")
    r = hessian.top_eigenvalues(obj, 2, tol=1e-6, bound="gap")
    back = type(r).from_dict(json.loads(r.to_json()))
    assert back.gaps == r.gaps and back.bound == "gap" and back.residual_bounds == r.residual_bounds
