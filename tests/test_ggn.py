"""The GGN and Fisher operators against dense matrices built independently from torch.func.jacrev / hessian, their
positive semi-definiteness, G = H for a linear model with squared error, the estimators running on them unchanged,
and the scipy LinearOperator view."""
import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
from torch import nn
from torch.func import functional_call, jacrev

import flatlens
from flatlens import FlatlensError, Objective, hessian, toys
from nets import image_data, tiny_cnn, tiny_mlp, vector_data


def dense(op):
    """An operator's matrix, by applying it to the identity."""
    return op.hvp_many(torch.eye(op.num_params, dtype=op.dtype))


def _jacobian(obj, x):
    """J = d f / d theta of the outputs on x, (n * outputs, P), by jacrev over the flat parameter vector."""
    theta = obj.flatten(obj.center)

    def f(th):
        return functional_call(obj.model, obj.full_params(obj.unflatten(th)), (x,))
    return jacrev(f)(theta).reshape(-1, obj.num_params)


def dense_ggn(obj):
    """sum_b w_b J_b' (d^2 L_b / d f^2) J_b, with the output Hessian from torch.func.hessian."""
    G = torch.zeros(obj.num_params, obj.num_params, dtype=obj.dtype)
    for w, (x, y) in zip(obj.data.weights, obj.data.batches):
        out = functional_call(obj.model, obj.center, (x,))
        H = torch.func.hessian(lambda o: obj.loss_fn(o, y))(out).reshape(out.numel(), out.numel())
        J = _jacobian(obj, x)
        G += w * J.T @ H @ J
    return G


def _per_sample_losses(loss_fn, out, t):
    """l(f_i, t_i): cross-entropy per sample, or the sum of squares over the sample's outputs."""
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return Fn.cross_entropy(out, t, reduction="none")
    return ((out - t) ** 2).reshape(out.shape[0], -1).sum(1)


def dense_fisher(obj, targets_per_batch):
    """(1/c) sum_i grad l_i grad l_i' averaged over the label sets given per batch (c = N for cross-entropy's mean,
    N D for the squared error's mean), per-sample gradients by jacrev of the unreduced losses."""
    N = obj.n_samples
    total = torch.zeros(obj.num_params, obj.num_params, dtype=obj.dtype)
    theta = obj.flatten(obj.center)
    for (x, _), T in zip(obj.data.batches, targets_per_batch):
        for t in T:
            def losses(th):
                out = functional_call(obj.model, obj.full_params(obj.unflatten(th)), (x,))
                return _per_sample_losses(obj.loss_fn, out, t)
            g = jacrev(losses)(theta)                       # (n, P)
            D = 1 if isinstance(obj.loss_fn, nn.CrossEntropyLoss) else int(np.prod(t.shape[1:]))
            total += g.T @ g / (N * D * len(T))
    return total


class RegressionMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _objectives(**kw):
    torch.manual_seed(0)
    x, y = vector_data(30)
    g = torch.Generator().manual_seed(1)
    reg = RegressionMLP().double()
    yr = torch.randn(30, 2, generator=g, dtype=torch.float64)
    return {
        "mlp-ce": Objective(tiny_mlp(), nn.CrossEntropyLoss(), [(x[:17], y[:17]), (x[17:], y[17:])], **kw),
        "cnn-ce": Objective(tiny_cnn(), nn.CrossEntropyLoss(), image_data(), **kw),
        "mlp-mse": Objective(reg, nn.MSELoss(), (x, yr), **kw),
    }


@pytest.fixture(scope="module")
def objectives():
    return _objectives()


@pytest.mark.parametrize("name", ["mlp-ce", "cnn-ce", "mlp-mse"])
def test_ggn_equals_the_dense_jacobian_product_and_is_psd(objectives, name):
    obj = objectives[name]
    G = dense(hessian.ggn(obj))
    ref = dense_ggn(obj)
    assert torch.allclose(G, ref, rtol=0, atol=1e-10 * max(1.0, float(ref.abs().max())))
    assert torch.allclose(G, G.T, atol=1e-12)
    w = torch.linalg.eigvalsh(ref)
    assert float(w.min()) >= -1e-10 * float(w.max())
    H = torch.func.hessian(lambda th: obj.value(obj.unflatten(th)))(obj.flatten(obj.center))
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-6  # the Hessian of these nets is indefinite; the GGN is not


@pytest.mark.parametrize("name", ["mlp-ce", "cnn-ce", "mlp-mse"])
@pytest.mark.parametrize("labels", ["empirical", "sampled"])
def test_fisher_equals_the_dense_per_sample_gradient_product_and_is_psd(objectives, name, labels):
    obj = objectives[name]
    op = hessian.fisher(obj, labels=labels, mc_samples=3, seed=5)
    F = dense(op)
    if labels == "empirical":
        targets = [b[1][None] for b in obj.data.batches]
    else:  # the draws are the operator's: the sampled Fisher is the empirical one at labels drawn from the model
        assert [tuple(t.shape[:2]) for t in op.targets] == [(3, len(b[1])) for b in obj.data.batches]
        targets = op.targets
    ref = dense_fisher(obj, targets)
    assert torch.allclose(F, ref, rtol=0, atol=1e-10 * max(1.0, float(ref.abs().max())))
    w = torch.linalg.eigvalsh(0.5 * (F + F.T))
    assert float(w.min()) >= -1e-10 * float(w.max())


def test_sampled_fisher_averages_to_the_ggn_and_its_labels_follow_the_model():
    # E over label draws of the sampled Fisher is the GGN (cross-entropy: the categorical's Fisher; squared error:
    # the Gaussian's): its distance to the GGN shrinks as 1/sqrt(draws) (0.035 and 0.052 at 100 draws per input)
    for name, obj in _objectives().items():
        if name == "cnn-ce":
            continue
        G = dense_ggn(obj)
        F = dense(hessian.fisher(obj, labels="sampled", mc_samples=4000, seed=0))
        assert float((F - G).norm() / G.norm()) < 0.02, name   # measured: 0.006 (CE), 0.005 (MSE)
    obj = _objectives()["mlp-ce"]
    op = hessian.fisher(obj, labels="sampled", mc_samples=4000, seed=1)
    x, _ = obj.data.batches[0]
    p = torch.softmax(functional_call(obj.model, obj.center, (x,)), 1)
    freq = torch.nn.functional.one_hot(op.targets[0], 3).double().mean(0)     # (n, classes)
    assert float((freq - p).abs().max()) < 4 * float(np.sqrt(0.25 / 4000)) + 1e-3


def test_ggn_of_a_linear_model_with_squared_error_is_its_hessian():
    obj = toys.linear_regression(64, 12, seed=0, batch_size=20)
    G = dense(hessian.ggn(obj))
    assert torch.allclose(G, obj.hessian, rtol=0, atol=1e-10 * float(obj.hessian.abs().max()))


def _curvature(obj, which):
    """(the operator, its dense matrix built independently: torch.func.jacrev / hessian, never the operator)."""
    if which == "ggn":
        return hessian.ggn(obj), dense_ggn(obj)
    if which == "fisher-empirical":
        return hessian.fisher(obj, labels="empirical"), dense_fisher(obj, [b[1][None] for b in obj.data.batches])
    op = hessian.fisher(obj, labels="sampled", mc_samples=3, seed=5)
    return op, dense_fisher(obj, op.targets)


@pytest.mark.parametrize("which,kind", [("ggn", "ggn"), ("fisher-sampled", "fisher (sampled labels)"),
                                        ("fisher-empirical", "fisher (empirical labels)")])
def test_estimators_run_unchanged_on_the_ggn_and_both_fishers(objectives, which, kind):
    """Every estimator (top eigenvalues, trace with its CI, density, diagonal) takes the GGN and the type-2 (sampled)
    and empirical Fisher as it takes the Hessian, and each answer matches the dense matrix's: its top eigenvalues,
    its trace inside the CI, the quadrature's top node and no negative Ritz value, the diagonal within its
    intervals."""
    obj = objectives["cnn-ce"]
    op, G = _curvature(obj, which)
    G = 0.5 * (G + G.T)
    w = torch.linalg.eigvalsh(G).numpy()
    top = hessian.top_eigenvalues(op, 3, tol=1e-12)
    np.testing.assert_allclose(top.values, w[::-1][:3], rtol=1e-6)
    assert top.objective["curvature"]["operator"] == kind
    t = hessian.trace(op, rtol=0.02, seed=0)
    assert t.ci95[0] <= float(torch.trace(G)) <= t.ci95[1]
    assert sum(v["value"] for v in t.per_layer.values()) == pytest.approx(t.value, rel=1e-9)
    dens = hessian.density(op, n_iter=40, n_runs=2, seed=0)
    nodes = np.concatenate([np.asarray(n) for n in dens.nodes])
    assert nodes.max() == pytest.approx(w.max(), rel=1e-8)       # the quadrature's top node: the top eigenvalue
    assert nodes.min() > -1e-8 * w.max()                          # no negative Ritz values: PSD
    dg = hessian.diagonal(op, n_probes=400, seed=1)
    z = (np.asarray(dg.values) - torch.diagonal(G).numpy()) / np.maximum(np.asarray(dg.stderr), 1e-12)
    assert np.mean(np.abs(z) < 1.96) > 0.85


@pytest.mark.parametrize("name", ["mlp-ce", "cnn-ce", "mlp-mse"])
@pytest.mark.parametrize("mode", ["graph", "recompute"])
def test_hessian_operator_equals_torch_func_hessian(name, mode):
    """The Hessian operator's dense matrix (applied to the identity) equals torch.func.hessian of the weighted batch
    losses, built from the model and loss directly (not through the Objective's value), to 1e-10 in float64."""
    obj = _objectives(hvp_mode=mode)[name]
    theta = obj.flatten(obj.center)

    def loss(th):
        p = obj.full_params(obj.unflatten(th))
        return sum(w * obj.loss_fn(functional_call(obj.model, p, (x,)), y)
                   for w, (x, y) in zip(obj.data.weights, obj.data.batches))
    ref = torch.func.hessian(loss)(theta)
    H = dense(obj.hessian_op)
    assert obj.hessian_op.mode == mode and H.dtype == torch.float64
    assert torch.allclose(H, ref, rtol=0, atol=1e-10 * max(1.0, float(ref.abs().max())))


def test_graph_and_recompute_modes_and_batched_products_agree(objectives):
    obj = objectives["cnn-ce"]
    V = torch.randn(5, obj.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for make in (lambda m: hessian.ggn(obj, mode=m), lambda m: hessian.fisher(obj, labels="sampled", seed=2, mode=m)):
        g, r = make("graph"), make("recompute")
        a = g.hvp_many(V, batched=False)
        assert torch.allclose(a, r.hvp_many(V, batched=False), atol=1e-12)
        assert torch.allclose(a, g.hvp_many(V, batched=True), atol=1e-12)
        assert g.n_hvp == 10 and r.n_hvp == 5
        d = g.hvp(obj.unflatten(V[0]))  # a dict in, a dict out
        assert torch.allclose(obj.flatten(d), a[0], atol=1e-12)


def test_parameters_the_outputs_never_use_get_zero_curvature():
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.spare = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.fc(x)
    obj = Objective(WithSpare().double(), nn.CrossEntropyLoss(), vector_data())
    G = dense(hessian.ggn(obj))
    a, b = obj.offsets[obj.names.index("spare")], obj.offsets[obj.names.index("spare") + 1]
    assert float(G[a:b].abs().max()) == 0 and float(G[:, a:b].abs().max()) == 0


def test_operators_refuse_what_they_cannot_take():
    obj = toys.quadratic([1.0, 2.0])  # a BatchLoss: no outputs to linearize
    with pytest.raises(FlatlensError, match="BatchLoss"):
        hessian.ggn(obj)
    x, y = vector_data()
    huber = Objective(tiny_mlp(), lambda o, t: nn.functional.huber_loss(o, nn.functional.one_hot(t, 3).double()),
                      (x, y))
    hessian.ggn(huber)  # the GGN takes any loss
    with pytest.raises(FlatlensError, match="CrossEntropyLoss or nn.MSELoss"):
        hessian.fisher(huber)
    smooth = Objective(tiny_mlp(), nn.CrossEntropyLoss(label_smoothing=0.1), (x, y))
    with pytest.raises(FlatlensError, match="label-smoothed"):
        hessian.fisher(smooth, labels="sampled")
    hessian.fisher(smooth, labels="empirical")
    weighted = Objective(tiny_mlp(), nn.CrossEntropyLoss(weight=torch.ones(3, dtype=torch.float64)), (x, y))
    with pytest.raises(FlatlensError, match="class-weighted"):
        hessian.fisher(weighted, labels="empirical")
    ok = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y))
    for bad in (dict(labels="observed"), dict(mc_samples=0), dict(mode="fast")):
        with pytest.raises(FlatlensError):
            hessian.fisher(ok, **bad)


def test_as_linear_operator_gives_scipy_eigsh_the_exact_top_eigenvalues():
    from scipy.sparse.linalg import LinearOperator, eigsh
    lam = np.concatenate([[50.0, 20.0, 10.0], np.linspace(-1, 1, 57)])
    obj = toys.quadratic(lam, seed=4)
    A = flatlens.as_linear_operator(obj)
    assert isinstance(A, LinearOperator) and A.shape == (60, 60) and A.dtype == np.float64
    vals = np.sort(eigsh(A, k=3, which="LA", tol=1e-12)[0])[::-1]
    np.testing.assert_allclose(vals, [50.0, 20.0, 10.0], rtol=1e-10)
    M = A @ np.eye(60)  # matmat goes through hvp_many
    np.testing.assert_allclose(M, obj.hessian.numpy(), atol=1e-12)
    # any flatlens curvature: the GGN of a small net, in float32 on the host as float64
    net = Objective(tiny_mlp(dtype=torch.float32), nn.CrossEntropyLoss(), vector_data(dtype=torch.float32))
    G = flatlens.as_linear_operator(hessian.ggn(net))
    top = eigsh(G, k=1, which="LA", tol=1e-6)[0][0]
    ref = hessian.top_eigenvalues(hessian.ggn(net), 1, tol=1e-6).values[0]
    assert top == pytest.approx(ref, rel=1e-4)
    assert G.matvec(np.ones(G.shape[0])).dtype == np.float64
