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
    res = sharpness.quantization_noise(obj, {"theta": s}, n_samples=400, n_probes=200, seed=0)
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
