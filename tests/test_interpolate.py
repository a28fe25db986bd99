"""The loss along the line between two models (landscape.interpolate): exact curves on toys, barriers of known
height, BatchNorm statistics recomputed at each point (and the artefact without), quantized endpoints, the registry's
pair entry through the pipeline, the cache and the command line."""
import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from flatlens import FlatlensError, Objective, landscape, toys
from flatlens.landscape.interpolate import Endpoint, deployment_rule, weights_at
from flatlens.objective import BatchLoss
from flatlens.quant.lsq import fake_quantize


# --------------------------------------------------------------------------- exact curves and barriers on toys
def test_quadratic_curve_equals_the_closed_form_in_float64():
    lam = np.array([5.0, 2.0, 1.0, 0.3, -0.2, 0.05])
    obj = toys.quadratic(lam, seed=1)
    A = {k: v.clone() for k, v in obj.model.state_dict().items()}
    B = {k: v.clone() for k, v in A.items()}
    g = torch.Generator().manual_seed(0)
    A["theta"] = A["theta"] + torch.randn(6, generator=g, dtype=torch.float64)
    B["theta"] = B["theta"] + torch.randn(6, generator=g, dtype=torch.float64)
    alphas = landscape.path_grid(-0.5, 1.5, 21)
    res = landscape.interpolate(obj, A, B, alphas)
    H, ts = obj.hessian, A["t_star"]
    t = lambda a: (1 - a) * A["theta"] + a * B["theta"]  # noqa: E731
    exact = np.array([float(0.5 * (t(a) - ts) @ H @ (t(a) - ts)) for a in alphas])
    np.testing.assert_allclose(res.losses, exact, rtol=0, atol=1e-10)
    # L(a) - line = -(1/2) a (1 - a) (t_B - t_A)' H (t_B - t_A): the closed form of the excess too
    d = B["theta"] - A["theta"]
    np.testing.assert_allclose(res.excess, -0.5 * alphas * (1 - alphas) * float(d @ H @ d), atol=1e-10)
    assert res.bn["policy"] == "none (no BatchNorm)" and res.barrier_ci95 is None  # one deterministic loss


def test_two_minima_of_a_convex_loss_have_no_barrier_within_its_interval():
    # softmax regression is convex in its weights: the minima fitted on two halves of the data, evaluated on all
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.8 * torch.randn(300, 3, generator=g,
                                                                                     dtype=torch.float64)).argmax(1)
    ends = []
    for half in (slice(0, 150), slice(150, 300)):
        m = nn.Linear(5, 3).double()
        opt = torch.optim.LBFGS(m.parameters(), max_iter=200, tolerance_grad=1e-12)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x[half]), y[half]) + 1e-3 * m.weight.square().sum()
            loss.backward()
            return loss
        opt.step(closure)
        ends.append(m)
    obj = Objective(ends[0], nn.CrossEntropyLoss(), (x, y))
    res = landscape.interpolate(obj, ends[0], ends[1], landscape.path_grid(-0.5, 1.5, 11))
    inside = [e for a, e in zip(res.alphas, res.excess) if 0 < a < 1]
    assert max(inside) < 0 and res.barrier == 0.0   # below the line inside [0, 1]: the maximum is at an end
    lo, hi = res.barrier_ci95
    assert lo <= 0.0 <= hi and lo == 0.0           # the ends are exact, so the interval starts at 0
    assert res.n_samples == 300 and "simultaneous" in res.interval


class DoubleWell(nn.Module):
    """out_i = x_i h (1 - t_0^2)^2 + x_i t_1^2 / 2: two basins t_0 = -1 and t_0 = +1, a wall of height h x_i
    between them on the line t_0 = 2a - 1 at a fixed t_1."""

    def __init__(self, h):
        super().__init__()
        self.h = h
        self.t = nn.Parameter(torch.tensor([-1.0, 0.3], dtype=torch.float64))

    def forward(self, x):
        return x * (self.h * (1 - self.t[0] ** 2) ** 2 + 0.5 * self.t[1] ** 2)


def test_a_toy_with_two_known_basins_has_its_known_barrier():
    h = 0.7
    g = torch.Generator().manual_seed(1)
    x = (0.5 + torch.rand(64, 1, generator=g, dtype=torch.float64))
    a, b = DoubleWell(h), DoubleWell(h)
    with torch.no_grad():
        b.t[0] = 1.0
    obj = Objective(a, lambda out, y: out.mean(), (x, torch.zeros(64, dtype=torch.float64)))
    res = landscape.interpolate(obj, a, b, landscape.path_grid(-0.2, 1.2, 11))
    known = h * float(x.mean())     # L(1/2) - L(0) = h mean(x): the wall on the line between the basins
    assert res.barrier == pytest.approx(known, abs=1e-12) and res.barrier_alpha == 0.5
    lo, hi = res.barrier_ci95
    assert lo < known < hi and res.barrier_alpha_range[0] <= 0.5 <= res.barrier_alpha_range[1]
    # the same toy through a custom loss (no per-sample values): the same barrier, no interval
    cobj = Objective(a, BatchLoss(lambda model, batch: (model(batch[0]).mean(), batch[0].shape[0])), [(x,)])
    cres = landscape.interpolate(cobj, a, b, landscape.path_grid(-0.2, 1.2, 11))
    assert cres.barrier == pytest.approx(known, abs=1e-12) and cres.barrier_ci95 is None


# --------------------------------------------------------------------------- BatchNorm
class BNMLP(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.bn = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x, (x[:, :3] + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)).argmax(1)


def _bn_model(seed, data):
    torch.manual_seed(seed)
    m = BNMLP().double()
    torch.optim.swa_utils.update_bn(data, m)  # its stored statistics: computed on `data`
    return m.eval()


def test_recomputed_statistics_reproduce_each_endpoints_own_loss():
    x, y = _data(256, 0)
    bn_data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    A, B = _bn_model(1, bn_data), _bn_model(2, bn_data)
    ev = _data(100, 5)
    obj = Objective(A, nn.CrossEntropyLoss(), ev)
    res = landscape.interpolate(obj, A, B, landscape.path_grid(-0.5, 1.5, 5), bn_data=bn_data)
    own_a = Objective(A, nn.CrossEntropyLoss(), ev).loss()
    own_b = Objective(B, nn.CrossEntropyLoss(), ev).loss()
    assert res.endpoint_losses[0] == pytest.approx(own_a, abs=1e-12)
    assert res.endpoint_losses[1] == pytest.approx(own_b, abs=1e-12)
    assert res.bn["policy"] == "recompute" and res.bn["batches"] == 4 and res.bn["samples"] == 256


def _permuted(m: BNMLP, perm) -> BNMLP:
    """The same function with its hidden units permuted (weights, BatchNorm parameters and statistics)."""
    p = BNMLP().double()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    for k in ("fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        sd[k] = sd[k][perm]
    sd["fc2.weight"] = sd["fc2.weight"][:, perm]
    p.load_state_dict(sd)
    return p.eval()


def test_without_recomputed_statistics_a_constructed_pair_shows_the_artefact():
    """B is A with its hidden units permuted: the midpoint's averaged units have a smaller variance than the
    interpolated running statistics say. Recomputed, the curve equals the midpoint network with its own exact
    statistics; interpolated, it does not (so a check against that truth can fail)."""
    x, y = _data(512, 0)
    bn_data = [(x, y)]                                    # one batch: the statistics are that batch's exactly
    A = _bn_model(3, bn_data)
    B = _permuted(A, torch.randperm(16, generator=torch.Generator().manual_seed(0)))
    ev = _data(200, 7)
    obj = Objective(A, nn.CrossEntropyLoss(), ev)
    assert Objective(B, nn.CrossEntropyLoss(), ev).loss() == pytest.approx(obj.loss(), abs=1e-12)  # same function
    alphas = landscape.path_grid(0, 1, 3)
    rec = landscape.interpolate(obj, A, B, alphas, bn_data=bn_data)
    naive = landscape.interpolate(obj, A, B, alphas, bn="interpolate")
    # the truth at a = 1/2: the midpoint network, BatchNorm with its own activations' mean and unbiased variance
    mid = BNMLP().double()
    mid.load_state_dict(weights_at(0.5, Endpoint(A.state_dict()), Endpoint(B.state_dict()), "full precision"))
    with torch.no_grad():
        z = mid.fc1(x)
        mid.bn.running_mean.copy_(z.mean(0))
        mid.bn.running_var.copy_(z.var(0, unbiased=True))
        collapse = float((z.var(0) / (0.5 * A.bn.running_var + 0.5 * B.bn.running_var)).mean())
    truth = Objective(mid.eval(), nn.CrossEntropyLoss(), ev).loss()
    assert rec.losses[1] == pytest.approx(truth, abs=1e-10)
    # the cause: the averaged units' variance is about half what the interpolated statistics say (0.46 here) ...
    assert collapse < 0.7, collapse
    # ... and the artefact: the naive curve misses the midpoint's loss by 0.054 nats (4.5 %) here
    assert abs(naive.losses[1] - truth) > 0.02, (naive.losses[1], truth)
    assert naive.bn["policy"] == "interpolate"


# --------------------------------------------------------------------------- quantized endpoints
def _quant(sd, names, bits, scale):
    return {"bits": bits, "steps": {n: (scale * sd[n].abs().reshape(sd[n].shape[0], -1).mean(1)) for n in names}}


def test_quantized_endpoints_are_exact_and_each_point_follows_its_stated_rule():
    torch.manual_seed(0)
    a, b = BNMLP().double().state_dict(), BNMLP().double().state_dict()
    names = ["fc1.weight"]
    qa, qb = _quant(a, names, 4, 0.4), _quant(b, names, 4, 0.6)
    A, B, F = Endpoint(a, qa), Endpoint(b, qb), Endpoint(a)
    assert deployment_rule(A, B) == "steps" and deployment_rule(F, B) == "mix" and deployment_rule(F, F) == \
        "full precision"
    for alpha, (end, q) in ((0.0, (a, qa)), (1.0, (b, qb))):
        w = weights_at(alpha, A, B, "steps")["fc1.weight"]
        assert torch.equal(w, fake_quantize(end["fc1.weight"], q["steps"]["fc1.weight"], 4))
    # in between, every weight lies on the grid of the interpolated step
    s = 0.7 * qa["steps"]["fc1.weight"] + 0.3 * qb["steps"]["fc1.weight"]
    codes = weights_at(0.3, A, B, "steps")["fc1.weight"] / s[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-9) and codes.abs().max() <= 8
    # full precision to quantized: the ends are each model's own weights
    assert torch.equal(weights_at(0.0, F, B, "mix")["fc1.weight"], a["fc1.weight"])
    assert torch.equal(weights_at(1.0, F, B, "mix")["fc1.weight"],
                       fake_quantize(b["fc1.weight"], qb["steps"]["fc1.weight"], 4))


def test_other_architectures_and_grids_without_the_ends_are_refused():
    x, y = _data(32, 0)
    A = BNMLP().double()
    obj = Objective(A, nn.CrossEntropyLoss(), (x, y))
    other = nn.Sequential(nn.Linear(6, 3)).double()
    with pytest.raises(FlatlensError, match="architecture"):
        landscape.interpolate(obj, A, other, [0.0, 0.5, 1.0])
    with pytest.raises(FlatlensError, match="0 and 1"):
        landscape.interpolate(obj, A, A, [0.0, 0.5])
    with pytest.raises(FlatlensError):
        landscape.path_grid(0.2, 1.0, 5)


# --------------------------------------------------------------------------- the registry entry, pipeline, CLI
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One seed's full-precision and 4-bit runs branched from one prefix, and another seed's full-precision run."""
    from flatlens.data import rotated_digits
    from flatlens.train import TrainConfig, train, train_prefix
    d = tmp_path_factory.mktemp("pair")
    data = rotated_digits()
    out = {}
    for seed in (0, 1):
        cfg = TrainConfig(steps=30, eval_every=15, quant_start=12, arch_kwargs={"width": 4}, select="last",
                          seed=seed)
        train_prefix(cfg, str(d / f"p{seed}.state"), data=data)
        for name, bits in (("fp", None), ("q4", 4)):
            if seed == 1 and bits:
                continue
            cfg.bits = bits
            train(cfg, str(d / f"{name}{seed}.pt"), quiet=True, data=data, prefix=str(d / f"p{seed}.state"))
            out[f"{name}{seed}"] = str(d / f"{name}{seed}.pt")
    return d, out


def test_the_pipeline_pairs_each_quantized_model_with_its_seeds_full_precision_model(pair):
    from flatlens import metrics as M
    from flatlens.cache import ResultCache
    from flatlens.checkpoint import load_checkpoint
    from flatlens.pipeline import Target, measure_all
    d, p = pair
    cks = {k: load_checkpoint(v) for k, v in p.items()}
    s = M.Settings(common=M.Common(samples=64),
                   metrics={"interpolate": M.InterpolateSettings(range=(0.0, 1.0), points=5, bn_batches=1)})
    cache = ResultCache(str(d / "cache"))
    # another seed's full-precision model listed first: q4 of seed 0 still goes with fp of seed 0 (its pairing)
    targets = [Target(cks["fp1"], ["interpolate"], s), Target(cks["fp0"], [], s),
               Target(cks["q40"], ["interpolate"], s)]
    done = measure_all(targets, ["train"], cache=cache)
    q = done.get(2, "train", "interpolate")
    assert q.result.endpoints["a"]["sha256"] == cks["fp0"].sha256
    assert q.settings["interpolate"]["partner"] == cks["fp0"].sha256
    assert done.get(0, "train", "interpolate").result.barrier == 0.0    # fp1 is its own partner
    assert s.of("interpolate").partner == ""   # the caller's settings are not written into
    # the partner is part of the cache key: the same checkpoint against another partner is measured anew
    again = measure_all([Target(cks["fp0"], [], s), Target(cks["q40"], ["interpolate"], s)], ["train"], cache=cache)
    assert again.get(1, "train", "interpolate").cached
    other = M.Settings(common=s.common, metrics={"interpolate": M.InterpolateSettings(
        range=(0.0, 1.0), points=5, bn_batches=1, partner=cks["fp1"].sha256)})
    moved = measure_all([Target(cks["fp1"], [], other), Target(cks["q40"], ["interpolate"], other)], ["train"],
                        cache=cache)
    rec = moved.get(1, "train", "interpolate")
    assert not rec.cached and rec.result.endpoints["a"]["sha256"] == cks["fp1"].sha256


def test_interpolate_command_writes_records_loss_landscape_files_and_a_figure(pair, capsys):
    from flatlens.cli import main
    from flatlens.landscape.results import InterpolationResult
    from flatlens.pipeline import MeasurementRun
    d, p = pair
    j, h, fig = d / "i.json", d / "i.h5", d / "i.png"
    assert main(["interpolate", p["fp0"], p["q40"], "--samples", "64", "--interp-points", "5", "--interp-range",
                 "-0.25", "1.25", "--bn-batches", "1", "--json", str(j), "--h5", str(h), "--plot", str(fig)]) == 0
    text = capsys.readouterr().out
    assert "loss barrier" in text and "train split" in text and "test split" in text and "mix:" in text
    run = MeasurementRun.from_json(j)
    assert [r.split for r in run.records] == ["train", "test"]
    res = run.records[0].result
    assert isinstance(res, InterpolationResult) and res.alphas[0] == -0.25 and len(res.alphas) == 7
    assert res.endpoints["a"]["path"] == p["fp0"] and "4-bit" in res.endpoints["b"]["weights"]
    with h5py.File(h, "r") as f:  # loss-landscape's 1D keys (its plot_1D.py reads these)
        np.testing.assert_allclose(f["xcoordinates"][:], res.alphas)
        np.testing.assert_allclose(f["train_loss"][:], res.losses)
        np.testing.assert_allclose(f["train_acc"][:], 100 * np.asarray(res.accuracies))
        assert "test_loss" in f and "test_acc" in f
        assert f["train_barrier"][0] == pytest.approx(res.barrier)
    assert fig.stat().st_size > 1000
    # compare sees it like any metric: each row against the first, every checkpoint against its partner
    assert main(["compare", p["fp0"], p["q40"], "--metric", "interpolate", "--samples", "64", "--interp-points", "5",
                 "--bn-batches", "1", "--no-cache", "--quiet", "--json", str(d / "c.json")]) == 0
    rows = json.loads((d / "c.json").read_text())["rows"]
    assert {r["key"] for r in rows} == {"barrier", "peak"} and rows[0]["value"] == 0.0


def test_interpolating_checkpoints_of_two_architectures_is_one_line(pair, tmp_path, capsys):
    from flatlens.cli import main
    from flatlens.data import rotated_digits
    from flatlens.train import TrainConfig, train
    _, p = pair
    wide = str(tmp_path / "wide.pt")
    train(TrainConfig(steps=2, eval_every=2, arch_kwargs={"width": 6}), wide, quiet=True, data=rotated_digits())
    assert main(["interpolate", p["fp0"], wide]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one architecture" in err
