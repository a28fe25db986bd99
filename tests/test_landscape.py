import numpy as np
import pytest
import torch
from torch import nn

from flatlens import FlatlensError, Objective, landscape, toys
from flatlens.landscape import DirectionSpace, Evaluator
from nets import image_data


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.act(self.bn(self.conv1(x)))
        return self.fc(self.pool(self.act(self.conv2(h))).flatten(1))


def bnnet_objective(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = BNNet().to(dtype)
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m, Objective(m, nn.CrossEntropyLoss(), [image_data(20, 0, dtype), image_data(13, 1, dtype)])


def test_curve_along_eigenvector_is_half_lambda_a_squared():
    lam = np.array([4.0, 1.0, 0.25, -0.5, 2.0])
    obj = toys.quadratic(lam, seed=0)
    alphas = landscape.grid(-2, 2, 9)
    for i in range(len(lam)):
        res = landscape.curve_1d(obj, obj.eigenvectors[:, i], alphas, strategy="loop")
        np.testing.assert_allclose(np.array(res.losses), 0.5 * lam[i] * alphas ** 2, atol=1e-12)


def test_vmap_and_loop_agree_on_cnn_with_batchnorm():
    _, obj = bnnet_objective()
    space = DirectionSpace(obj, "filter")
    D = space.make(0, range(6)) * 0.7
    lo_loop, acc_loop = Evaluator(obj, strategy="loop")(D)
    lo_vmap, acc_vmap = Evaluator(obj, strategy="vmap")(D)
    np.testing.assert_allclose(lo_loop.numpy(), lo_vmap.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acc_loop.numpy(), acc_vmap.numpy())
    ev = Evaluator(obj, strategy="auto")
    lo_auto, _ = ev(D)
    assert ev.describe()["strategy"] in ("loop", "vmap") and "picked" in ev.calibration
    np.testing.assert_allclose(lo_auto.numpy(), lo_loop.numpy(), rtol=1e-5, atol=1e-5)


def test_evaluator_leaves_models_untouched_and_centre_exact():
    model, obj = bnnet_objective()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev = Evaluator(obj, strategy="loop")
    D = DirectionSpace(obj, "gaussian").make(1, range(3))
    D[1] = 0
    lo, _ = ev(D)
    assert lo[1] == obj.loss()
    assert obj.loss_at({}) == pytest.approx(obj.loss(), rel=1e-7)  # private copy restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _scaled_relu_pair(c):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        m[0].weight *= c
        m[0].bias *= c
        m[2].weight /= c
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    return Objective(m, nn.CrossEntropyLoss(), (x, y))


def test_filter_normalized_curves_are_scale_invariant_gaussian_are_not():
    alphas = landscape.grid(-1, 1, 7)
    a, b = _scaled_relu_pair(1.0), _scaled_relu_pair(5.0)
    assert a.loss() == pytest.approx(b.loss(), rel=1e-12)  # same function
    fa = landscape.random_curves(a, alphas, kind="filter", n_directions=3, seed=0, ignore="none")
    fb = landscape.random_curves(b, alphas, kind="filter", n_directions=3, seed=0, ignore="none")
    np.testing.assert_allclose(fa.losses, fb.losses, rtol=1e-9)
    ga = landscape.random_curves(a, alphas, kind="gaussian", n_directions=3, seed=0)
    gb = landscape.random_curves(b, alphas, kind="gaussian", n_directions=3, seed=0)
    assert np.max(np.abs(np.array(ga.losses) - np.array(gb.losses))) > 1e-3


def test_surface_centre_equals_loss_and_pair_is_orthogonal():
    _, obj = bnnet_objective(torch.float64)
    xs, ys = landscape.grid(-1, 1, 5), landscape.grid(-0.5, 1, 4)
    assert 0.0 in ys
    res = landscape.random_surface(obj, xs, ys, kind="filter", seed=2)
    j, i = list(ys).index(0.0), list(xs).index(0.0)
    assert res.losses[j][i] == obj.loss()
    dx, dy = DirectionSpace(obj, "filter").orthogonal_pair(2)
    assert abs(float(dx @ dy)) < 1e-10 * float(dx.norm() * dy.norm())
    # the second direction keeps the filter norms exactly
    w = obj.center["conv1.weight"].reshape(4, -1).norm(dim=1)
    d = obj.unflatten(dy)["conv1.weight"].reshape(4, -1).norm(dim=1)
    assert torch.allclose(w, d)
    assert obj.unflatten(dy)["bn.bias"].abs().sum() == 0  # biasbn policy


def test_zero_bias_gives_zero_direction_not_nan():
    m = nn.Linear(3, 2).double()
    with torch.no_grad():
        m.bias.zero_()
    obj = Objective(m, nn.MSELoss(), (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)))
    for kind in ("filter", "layer"):
        d = landscape.directions(obj, kind, ignore="none")
        assert torch.all(d["bias"] == 0) and torch.isfinite(d["weight"]).all()
    s = landscape.directions(obj, "sphere")
    assert float(obj.flatten(s).norm()) == pytest.approx(1.0)
    g = landscape.directions(obj, "gaussian", seed=0)
    assert (obj.flatten(g) < 0).any() and (obj.flatten(g) > 0).any()  # signed, unlike loss-landscapes


def test_bad_input_errors():
    _, obj = bnnet_objective()
    with pytest.raises(FlatlensError, match="empty"):
        landscape.curve_1d(obj, landscape.directions(obj), [])
    with pytest.raises(FlatlensError, match="shape"):
        landscape.curve_1d(obj, {"conv1.weight": torch.ones(2, 2)}, [0.0, 1.0])
    with pytest.raises(FlatlensError, match="kind"):
        landscape.directions(obj, "random")
    with pytest.raises(FlatlensError, match="strategy"):
        Evaluator(obj, strategy="fast")


def test_bf16_precision_reports_its_error():
    _, obj = bnnet_objective()
    ev = Evaluator(obj, strategy="loop", precision="bf16")
    lo, _ = ev(DirectionSpace(obj, "filter").make(0, range(4)) * 0.3)
    ref, _ = Evaluator(obj, strategy="loop")(DirectionSpace(obj, "filter").make(0, range(4)) * 0.3)
    assert ev.precision_error is not None and ev.precision_error == pytest.approx(float((lo - ref).abs().max()))
    assert ev.precision_error < 0.1


def test_auto_recuts_batches_only_when_the_loss_is_unchanged():
    from flatlens.perturb.calibration import PickStore
    torch.manual_seed(0)
    m = BNNet()
    x, y = image_data(300, 0, torch.float32)
    PickStore.memo.clear()
    for bn in ("eval", "train"):
        obj = Objective(m, nn.CrossEntropyLoss(), (x, y), bn=bn)
        ev = Evaluator(obj, strategy="auto")
        D = DirectionSpace(obj, "filter").make(0, range(3)) * 0.2
        lo, _ = ev(D)
        ref, _ = Evaluator(obj, strategy="loop")(D)
        np.testing.assert_allclose(lo.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
        timed = ev.calibration["seconds_per_point"]
        assert any(k.endswith("|64") for k in timed)
        if bn == "train":  # batch statistics: re-cut batches would change F, so they are never used
            assert ev.batch_size is None


def test_auto_never_picks_a_layout_that_changes_the_centre_loss(monkeypatch):
    # channels_last over the resident batches made fastest, but (simulated) off by 1e-3 at the centre: a
    # layout other than the objective's own is used only if it reproduces F
    from flatlens.perturb.calibration import PickStore
    monkeypatch.setattr(PickStore, "memo", {})
    monkeypatch.setattr(PickStore, "put", classmethod(lambda cls, *a: None))
    monkeypatch.setattr(PickStore, "stored", classmethod(lambda cls: {}))
    _, obj = bnnet_objective()
    real = Evaluator._forward_all

    def skewed(self, precision=None, compiled=None):
        f, c = real(self, precision, compiled)
        return (f + 1e-3 if self.channels_last else f), c

    monkeypatch.setattr(Evaluator, "_forward_all", skewed)
    monkeypatch.setattr(Evaluator, "_time_prefix", lambda self, n: 1.0 if self.channels_last else 2.0)
    ev = Evaluator(obj, strategy="auto")
    ev(DirectionSpace(obj, "filter").make(0, range(2)))
    assert not ev.channels_last and ev.calibration["picked"] == "loop"
    assert all(v == float("inf") for k, v in ev.calibration["seconds_per_point"].items() if "channels_last" in k
               and k.endswith("resident"))


def test_evaluator_accuracy_follows_the_objectives_classification_rule():
    from flatlens import Objective
    from torch import nn
    reg = toys.linear_regression(40, 5, seed=0)
    ev = landscape.Evaluator(reg, strategy="loop")
    _, acc = ev(torch.zeros(3, reg.num_params, dtype=reg.dtype))
    assert acc is None and not reg.is_classification and reg.accuracy() is None
    # several outputs with an MSE target: no accuracy, and no crash
    model = nn.Linear(4, 3).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    multi = Objective(model, nn.MSELoss(), (x, torch.randn(16, 3, dtype=torch.float64)))
    losses, acc = landscape.Evaluator(multi, strategy="loop")(0.1 * torch.ones(2, multi.num_params, dtype=torch.float64))
    assert acc is None and torch.isfinite(losses).all()
    cls = Objective(model, nn.CrossEntropyLoss(), (x, torch.randint(0, 3, (16,))))
    _, acc = landscape.Evaluator(cls, strategy="loop")(torch.zeros(1, cls.num_params, dtype=torch.float64))
    assert acc is not None and float(acc[0]) == pytest.approx(cls.accuracy())


def test_auto_pick_is_recorded_and_reused_so_reruns_give_identical_numbers(monkeypatch):
    from flatlens.perturb import evaluator as ev_mod
    from flatlens.perturb.calibration import PickStore
    from nets import image_data, tiny_cnn
    from flatlens import Objective
    from torch import nn
    x, y = image_data(n=200, dtype=torch.float32)
    obj = Objective(tiny_cnn(dtype=torch.float32), nn.CrossEntropyLoss(), (x, y))
    D = landscape.DirectionSpace(obj, "filter").make(0, range(4))
    monkeypatch.setattr(PickStore, "memo", {})
    first = landscape.Evaluator(obj)(D)[0]
    assert len(PickStore.stored()) >= 1
    # a new process (simulated: the in-memory picks forgotten) must not re-time: it reads the recorded pick

    def no_timing(*a, **k):
        raise AssertionError("re-timed instead of reusing the recorded pick")

    monkeypatch.setattr(PickStore, "memo", {})
    monkeypatch.setattr(ev_mod.Evaluator, "_time_prefix", no_timing)
    again = landscape.Evaluator(obj)
    assert torch.equal(again(D)[0], first) and again.describe()["calibration"]["reused"]


@pytest.mark.slow
def test_compiled_loop_matches_the_eager_loop_at_every_point_and_records_its_compile_time():
    # the compiled graph takes the parameters as inputs: writing each point into them must change the loss
    # (a graph that had frozen them as constants would return the centre loss at every point)
    _, obj = bnnet_objective()
    D = DirectionSpace(obj, "filter").make(0, range(5)) * 0.7
    ref, acc_ref = Evaluator(obj, strategy="loop")(D)
    ev = Evaluator(obj, strategy="compiled")
    lo, acc = ev(D)
    np.testing.assert_allclose(lo.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc.numpy(), acc_ref.numpy())
    assert len(set(np.round(lo.numpy(), 6))) == 5 and abs(float(lo[0]) - obj.loss()) > 1e-3
    d = ev.describe()
    assert d["strategy"] == "compiled" and d["compile_seconds"] > 0
    # the objective's model was never compiled or changed
    assert not hasattr(obj.model, "_orig_mod") and Evaluator(obj, strategy="loop")(D[:1])[0][0] == ref[0]


def test_a_recorded_pick_is_not_reused_where_it_changes_the_loss(monkeypatch):
    # picks are keyed by model and batch shapes, not by the loss: re-cut batches recorded for a mean loss
    # would change a sum-reduced loss, so they are checked at the centre and recalibrated
    from flatlens.perturb.calibration import PickStore
    from nets import tiny_cnn
    x, y = image_data(200, 0, torch.float32)
    obj = Objective(tiny_cnn(dtype=torch.float32), nn.CrossEntropyLoss(reduction="sum"), (x, y))
    monkeypatch.setattr(PickStore, "put", classmethod(lambda cls, *a: None))
    monkeypatch.setattr(PickStore, "stored", classmethod(lambda cls: {}))
    ev = Evaluator(obj)
    sig = ev._signature()
    monkeypatch.setattr(PickStore, "memo", {sig: {"picked": "loop", "channels_last": False, "batch_size": 64,
                                                  "seconds_per_point": {}, "vmap_chunk": None}})
    D = DirectionSpace(obj, "filter").make(0, range(2)) * 0.3
    lo, _ = ev(D)
    assert "reused" not in ev.calibration and ev.batch_size is None
    np.testing.assert_allclose(lo.numpy(), Evaluator(obj, strategy="loop")(D)[0].numpy(), rtol=1e-6)


class PublicOnly:
    """An Objective seen through its public interface only: any private attribute read fails the test."""

    def __init__(self, obj):
        object.__setattr__(self, "_obj", obj)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AssertionError(f"the perturbation engine read the Objective's private {name!r}")
        return getattr(object.__getattribute__(self, "_obj"), name)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "auto", pytest.param("compiled", marks=pytest.mark.slow)])
def test_the_perturbation_engine_uses_the_objectives_public_interface_only(strategy):
    from flatlens import sharpness
    model, real = bnnet_objective()
    obj = PublicOnly(real)
    centre = {n: t.clone() for n, t in real.center.items()}
    buffers = {n: b.clone() for n, b in real.model.named_buffers()}
    params = {n: p.clone() for n, p in real.model.named_parameters()}
    D = landscape.DirectionSpace(obj, "filter").make(0, range(3)) * 0.3
    lo, _ = landscape.Evaluator(obj, strategy=strategy)(D)
    ref, _ = landscape.Evaluator(real, strategy="loop")(D)
    np.testing.assert_allclose(lo.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    sharpness.local_flatness(obj, [0.0, 0.5], n_directions=3, strategy=strategy)
    landscape.random_curves(obj, [-0.1, 0.0, 0.1], n_directions=2, strategy=strategy)
    # the Objective's own model was never changed behind its back
    for n, p in real.model.named_parameters():
        assert torch.equal(p, params[n]) and torch.equal(real.center[n], centre[n])
    for n, b in real.model.named_buffers():
        assert torch.equal(b, buffers[n])
