import pytest
import torch
from torch import nn

from flatlens import BatchLoss, FlatlensError, Objective
from nets import image_data, tiny_cnn, tiny_mlp, vector_data


def test_value_is_sample_weighted_mean_over_unequal_batches():
    model = tiny_mlp()
    x, y = vector_data(30)
    whole = Objective(model, nn.CrossEntropyLoss(), (x, y))
    parts = Objective(model, nn.CrossEntropyLoss(), [(x[:7], y[:7]), (x[7:25], y[7:25]), (x[25:], y[25:])])
    assert whole.n_samples == parts.n_samples == 30
    assert parts.loss() == pytest.approx(whole.loss(), rel=1e-12)
    v = torch.randn(whole.num_params, dtype=torch.float64)
    assert torch.allclose(whole.hvp(v), parts.hvp(v), rtol=1e-10, atol=1e-12)


def test_callers_model_weights_and_mode_are_untouched():
    model = tiny_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = Objective(model, nn.CrossEntropyLoss(), image_data())
    obj.hvp(torch.ones(obj.num_params, dtype=torch.float64))
    obj.loss_at({n: t + 1 for n, t in obj.center.items()})
    assert model.training and model.bn.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


def test_unused_parameters_give_zero_curvature():
    model = tiny_mlp()
    model.unused = nn.Linear(3, 3).double()
    obj = Objective(model, nn.CrossEntropyLoss(), vector_data())
    hv = obj.hvp({n: torch.ones_like(t) for n, t in obj.center.items()})
    assert torch.count_nonzero(hv["unused.weight"]) == 0 and torch.count_nonzero(hv["unused.bias"]) == 0
    assert hv["fc1.weight"].abs().sum() > 0


def test_bn_eval_uses_running_statistics_and_train_uses_batch_statistics():
    model = tiny_cnn()
    data = image_data()
    ev = Objective(model, nn.CrossEntropyLoss(), data, bn="eval")
    tr = Objective(model, nn.CrossEntropyLoss(), data, bn="train")
    model.eval()
    with torch.no_grad():
        ref = nn.CrossEntropyLoss()(model(data[0]), data[1]).item()
    assert ev.loss() == pytest.approx(ref, rel=1e-12)
    assert tr.loss() != pytest.approx(ref, rel=1e-6)
    assert tr.describe()["bn"] == "train"


def test_custom_batch_loss_on_dict_batches_matches_plain_loss():
    model = tiny_mlp()
    x, y = vector_data()

    def fn(m, batch):
        return nn.functional.cross_entropy(m(batch["input"]), batch["label"]), len(batch["label"])

    custom = Objective(model, BatchLoss(fn), [{"input": x[:10], "label": y[:10]}, {"input": x[10:], "label": y[10:]}])
    plain = Objective(model, nn.CrossEntropyLoss(), (x, y))
    assert custom.loss() == pytest.approx(plain.loss(), rel=1e-12)


def test_loss_at_params_subset_and_accuracy():
    model = tiny_mlp()
    obj = Objective(model, nn.CrossEntropyLoss(), vector_data(), params=["fc2.weight", "fc2.bias"])
    assert obj.num_params == 6 * 3 + 3
    assert obj.loss_at({"fc2.bias": obj.center["fc2.bias"] + 0.0}) == obj.loss()
    f, acc = obj.loss_and_accuracy()
    assert 0.0 <= acc <= 1.0 and f == pytest.approx(obj.loss())


@pytest.mark.parametrize("mode", ["graph", "recompute"])
def test_hvp_modes_agree(mode):
    obj = Objective(tiny_cnn(), nn.CrossEntropyLoss(), [image_data(10, 1), image_data(14, 2)], hvp_mode=mode)
    ref = Objective(tiny_cnn(), nn.CrossEntropyLoss(), [image_data(10, 1), image_data(14, 2)], hvp_mode="graph")
    v = torch.randn(obj.num_params, dtype=torch.float64)
    assert torch.allclose(obj.hvp(v), ref.hvp(v), rtol=1e-10, atol=1e-12)


def test_bad_input_is_refused_clearly():
    model = tiny_mlp()
    with pytest.raises(FlatlensError, match="empty"):
        Objective(model, nn.CrossEntropyLoss(), [])
    with pytest.raises(FlatlensError, match="scalar"):
        Objective(model, nn.CrossEntropyLoss(reduction="none"), vector_data())
    with pytest.raises(FlatlensError, match="bn"):
        Objective(model, nn.CrossEntropyLoss(), vector_data(), bn="frozen")
    obj = Objective(model, nn.CrossEntropyLoss(), vector_data())
    with pytest.raises(FlatlensError, match="entries"):
        obj.hvp(torch.ones(3, dtype=torch.float64))


def test_batched_hvp_equals_loop():
    obj = Objective(tiny_cnn(), nn.CrossEntropyLoss(), image_data(), hvp_mode="graph")
    V = torch.randn(5, obj.num_params, dtype=torch.float64)
    loop = obj.hvp_many(V)
    batched = obj.hvp_many(V, batched=True)
    assert torch.allclose(loop, batched, rtol=1e-10, atol=1e-12)
    assert obj.n_hvp == 10


def test_hvps_over_recut_batches_equal_the_callers_batches():
    x, y = image_data(300, 3)
    a = Objective(tiny_cnn(), nn.CrossEntropyLoss(), (x, y), hvp_batch_size=64)
    b = Objective(tiny_cnn(), nn.CrossEntropyLoss(), (x, y), hvp_batch_size=None)
    assert a.describe()["hvp_batch_size"] == 64 and b.describe()["hvp_batch_size"] is None
    v = torch.randn(a.num_params, dtype=torch.float64)
    assert torch.allclose(a.hvp(v), b.hvp(v), rtol=1e-9, atol=1e-12)
    # batch statistics depend on the batching: never re-cut
    c = Objective(tiny_cnn(), nn.CrossEntropyLoss(), (x, y), bn="train", hvp_batch_size=64)
    assert c.describe()["hvp_batch_size"] is None


def test_flushing_denormals_does_not_change_hvps():
    a = Objective(tiny_cnn(), nn.CrossEntropyLoss(), image_data(), flush_denormal=True)
    b = Objective(tiny_cnn(), nn.CrossEntropyLoss(), image_data(), flush_denormal=False)
    v = torch.randn(a.num_params, dtype=torch.float64)
    assert torch.allclose(a.hvp(v), b.hvp(v), rtol=1e-12, atol=1e-14)
    tiny = torch.tensor(1e-300, dtype=torch.float64) * 1e-10  # a subnormal result
    assert tiny.item() != 0.0  # the global flush flag is off again


def test_an_objective_leaves_no_graph_alive_when_dropped():
    # the graph-size probe once returned the saved tensor itself from its pack hook: a ReLU output saved by its
    # own backward node then referenced its grad_fn, a cycle through autograd's C++ graph that the garbage
    # collector cannot free, keeping the first batch's double-backward graph alive for good
    import gc
    import weakref
    x, y = image_data()
    refs = []
    model = tiny_cnn()
    model.act.register_forward_hook(lambda m, i, out: refs.append(weakref.ref(out)))
    for mode in ("auto", "graph", "recompute"):
        obj = Objective(model, nn.CrossEntropyLoss(), (x, y), hvp_mode=mode)
        obj.hvp(torch.ones(obj.num_params, dtype=obj.dtype))
        del obj
    gc.collect()
    assert refs and all(r() is None for r in refs)


def test_batched_and_single_hvps_agree_and_the_auto_pick_is_recorded():
    x, y = vector_data(40)
    obj = Objective(tiny_mlp(), nn.CrossEntropyLoss(), (x, y))
    V = torch.randn(11, obj.num_params, dtype=torch.float64)  # more than one block of 8
    single = obj.hvp_many(V, batched=False)
    batched = obj.hvp_many(V, batched=True)
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)
    assert obj.describe()["hvp_batched"] is None  # not needed yet, not measured
    auto = obj.hvp_many(V)
    torch.testing.assert_close(auto, single, rtol=1e-10, atol=1e-12)
    assert obj.describe()["hvp_batched"] is False  # on a CPU the loop is the pick (measured slower batched)
    assert obj.n_hvp == 33


@pytest.mark.parametrize("mode", ["graph", "recompute"])
def test_batched_hvp_rows_are_capped_by_the_graph_budget_in_every_mode(mode):
    # an explicit hvp_mode once left the block at 8 rows whatever the graph weighed
    x, y = image_data(96, 3)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    probe = Objective(tiny_cnn(), nn.CrossEntropyLoss(), batches, hvp_batch_size=None)
    H = probe.hessian_op
    per_backward = H.graph_bytes_estimate if mode == "graph" else H.graph_bytes_per_sample * 32
    assert H.graph_bytes_estimate == pytest.approx(3 * H.graph_bytes_per_sample * 32, rel=1e-9)
    for rows in (1, 3, 8):
        obj = Objective(tiny_cnn(), nn.CrossEntropyLoss(), batches, hvp_mode=mode, hvp_batch_size=None,
                        graph_budget_bytes=int(rows * per_backward) + 1)
        assert obj.hessian_op.hvp_block == rows
    V = torch.randn(5, probe.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp_many(V, batched=True), probe.hvp_many(V, batched=False), rtol=1e-10,
                               atol=1e-12)


def test_mps_is_refused_up_front_with_the_reason():
    from flatlens._util import resolve_device
    with pytest.raises(FlatlensError, match="'mps' is not supported.*float64"):
        resolve_device("mps")
    with pytest.raises(FlatlensError, match="'mps' is not supported"):
        Objective(tiny_mlp(), nn.CrossEntropyLoss(), vector_data(8), device="mps")
