import numpy as np
import pytest
import torch

from flatlens import FlatlensError, sharpness, toys

LAM = np.concatenate([np.linspace(0.5, 4.0, 38), [-0.3, 8.0]])


def test_local_flatness_is_r2_over_2_tr_over_d_within_ci():
    obj = toys.quadratic(LAM, seed=0)
    radii = [0.0, 0.5, 1.0, 2.0]
    res = sharpness.local_flatness(obj, radii, n_directions=200, seed=0)
    assert res.mean[0] == 0.0
    for r, (lo, hi) in zip(radii[1:], res.ci95[1:]):
        exact = r ** 2 / 2 * LAM.sum() / len(LAM)
        assert lo <= exact <= hi, (r, exact, lo, hi)
    assert len(res.increases) == 200 and res.seed == 0


def test_quantization_noise_measured_and_predicted_match_exact():
    obj = toys.quadratic(LAM, seed=1)
    g = torch.Generator().manual_seed(0)
    s = 0.1 + torch.rand(len(LAM), generator=g, dtype=torch.float64)
    exact = float((s ** 2 * torch.diagonal(obj.hessian)).sum() / 24)
    res = sharpness.quantization_noise(obj, {"theta": s}, n_samples=400, pred_rtol=0.02, seed=0)
    assert res.measured_ci95[0] <= exact <= res.measured_ci95[1]
    assert res.predicted_ci95[0] <= exact <= res.predicted_ci95[1]
    assert res.ratio == pytest.approx(res.measured / res.predicted)


def test_quantization_noise_per_channel_broadcast():
    import torch.nn as nn
    from flatlens import Objective
    conv = nn.Conv2d(1, 3, 3).double()
    x = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    obj = Objective(nn.Sequential(conv, nn.Flatten()), lambda out, y: (out ** 2).mean(), (x, torch.zeros(8)))
    S = sharpness.step_vector(obj, {"0.weight": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)})
    sw = obj.unflatten(S)["0.weight"]
    assert torch.all(sw[1] == 0.2) and torch.all(obj.unflatten(S)["0.bias"] == 0)
    with pytest.raises(FlatlensError, match="entries"):
        sharpness.step_vector(obj, {"0.weight": torch.ones(2)})


def test_worst_case_on_quadratic_reaches_half_lambda_max_rho_squared():
    obj = toys.quadratic(LAM, seed=2)
    rho = 0.3
    res = sharpness.worst_case(obj, rho, steps=60, seed=0)
    exact = 0.5 * LAM.max() * rho ** 2
    assert res.increase <= exact * (1 + 1e-9)
    assert res.increase >= 0.97 * exact
    assert res.perturbation_norm == pytest.approx(rho, rel=1e-6)


def test_adaptive_worst_case_scales_ball_with_weights():
    obj = toys.quadratic(LAM, seed=2, offset=np.full(len(LAM), 0.0))
    res = sharpness.worst_case(obj, 0.1, adaptive=True, steps=30, seed=0)
    assert res.adaptive and res.scaled_norm <= 0.1 + 1e-9
    w = obj.flatten(obj.center).abs()
    assert res.perturbation_norm <= 0.1 * float(w.max()) + 1e-9


def test_bad_input_errors():
    obj = toys.quadratic(LAM, seed=0)
    with pytest.raises(FlatlensError, match=">= 0"):
        sharpness.local_flatness(obj, [0.0, -1.0])
    with pytest.raises(FlatlensError, match="empty"):
        sharpness.local_flatness(obj, [])
    with pytest.raises(FlatlensError, match="rho"):
        sharpness.worst_case(obj, -0.1)
    with pytest.raises(FlatlensError, match="not in the objective"):
        sharpness.quantization_noise(obj, {"nope": torch.ones(1)})


def _steps(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 + torch.rand(n, generator=g, dtype=torch.float64)


def test_antithetic_noise_estimator_is_unbiased_on_a_quadratic_away_from_its_minimum():
    # a quadratic off its minimum: plain Monte Carlo carries the first-order term's variance; each antithetic
    # pair is exactly 1/2 D'AD, so its mean is (1/24) sum s^2 A_ii and its t-interval covers it
    obj = toys.quadratic(LAM, seed=1, offset=np.full(len(LAM), 0.3))
    s = _steps(len(LAM))
    exact = float((s ** 2 * torch.diagonal(obj.hessian)).sum() / 24)
    covered = 0
    n_sim = 400
    for seed in range(n_sim):
        r = sharpness.quantization_noise(obj, {"theta": s}, n_samples=20, pred_rtol=1.0, pred_max_hvp=12, seed=seed,
                                         strategy="loop")
        assert r.estimator == "antithetic" and r.n_evaluations == 40 and len(r.samples) == 20
        covered += r.measured_ci95[0] <= exact <= r.measured_ci95[1]
    assert 0.92 <= covered / n_sim <= 0.98, covered / n_sim


def test_antithetic_pairs_beat_plain_monte_carlo_at_equal_cost_on_a_network():
    from torch import nn
    from flatlens import Objective
    from nets import tiny_mlp, vector_data
    obj = Objective(tiny_mlp(), nn.CrossEntropyLoss(), vector_data(60))
    steps = {n: torch.full_like(t, 0.3) for n, t in obj.center.items() if n.endswith("weight")}
    ratios = []
    for seed in range(5):
        a = sharpness.quantization_noise(obj, steps, n_samples=100, pred_rtol=1.0, pred_max_hvp=12, seed=seed,
                                         estimator="antithetic")
        p = sharpness.quantization_noise(obj, steps, n_samples=100, pred_rtol=1.0, pred_max_hvp=12, seed=seed,
                                         estimator="plain")
        assert a.n_evaluations == p.n_evaluations == 200 and len(p.samples) == 200
        ratios.append(p.measured_stderr / a.measured_stderr)
    assert min(ratios) > 1.2, ratios


def test_quantization_noise_ratio_has_a_fieller_interval():
    obj = toys.quadratic(LAM, seed=1)
    r = sharpness.quantization_noise(obj, {"theta": _steps(len(LAM))}, n_samples=200, pred_rtol=0.02, seed=0)
    assert r.ratio_bounded and r.ratio_ci95[0] < r.ratio < r.ratio_ci95[1]
    assert r.ratio_ci95[0] <= 1.0 <= r.ratio_ci95[1]  # exact on a quadratic: both estimate the same number


def test_quantization_noise_rejects_unknown_estimator():
    obj = toys.quadratic(LAM, seed=0)
    with pytest.raises(FlatlensError, match="estimator"):
        sharpness.quantization_noise(obj, {"theta": _steps(len(LAM))}, estimator="magic")


def test_sharpness_metric_measures_the_objectives_own_loss_and_batchnorm_mode(monkeypatch):
    # its per-batch objectives once hard-coded plain cross-entropy and BatchNorm in eval mode
    from torch import nn
    from flatlens import Objective, metrics
    from nets import image_data, tiny_cnn
    seen = []
    real = sharpness.worst_case

    def spy(sub, *a, **k):
        seen.append((sub.loss_fn, sub.bn, sub.names))
        return real(sub, *a, **k)

    import sys
    monkeypatch.setattr(sys.modules["flatlens.sharpness.worst_case"], "worst_case", spy)  # what batch_sharpness calls
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    obj = Objective(tiny_cnn(), loss, image_data(), bn="train")
    res = metrics.REGISTRY["sharpness"].compute(obj, metrics.SharpnessSettings(steps=1, batches=2), metrics.Context())
    assert len(res.worst_case) == 2 and len(seen) == 4
    assert all(lf is loss and bn == "train" and names == obj.names for lf, bn, names in seen)


def test_resumable_chunks_of_another_precision_are_never_reused(tmp_path):
    from torch import nn
    from flatlens import Objective
    from nets import image_data, tiny_cnn
    obj = Objective(tiny_cnn(dtype=torch.float32), nn.CrossEntropyLoss(), image_data(40, 0, torch.float32))
    kw = dict(n_directions=3, seed=0, strategy="loop", store=str(tmp_path), progress=False)
    fp32 = sharpness.local_flatness(obj, [0.0, 1.0], precision="fp32", **kw)
    bf16 = sharpness.local_flatness(obj, [0.0, 1.0], precision="bf16", **kw)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # one keyed folder per precision
    assert bf16.increases != fp32.increases  # computed in bf16, not read back from the fp32 chunks
    again = sharpness.local_flatness(obj, [0.0, 1.0], precision="fp32", **kw)
    assert again.increases == fp32.increases
