import math

import pytest
import torch
from torch import nn

from flatlens import FlatlensError
from flatlens.models import SmallCNN
from flatlens.quant import (LSQ, deployed_state_dict, export_integer, fake_quantize, init_step, latent_state,
                            packed_size, quantize_model, qrange, step_parameters)


def test_levels_and_clipping():
    w = torch.linspace(-3, 3, 1001).reshape(1, -1)
    q = LSQ(w, bits=3, per_channel=False)
    with torch.no_grad():
        q.step.fill_(0.5)
    out = q(w)
    codes = torch.unique(torch.round(out / 0.5))
    assert codes.min() == -4 and codes.max() == 3  # Q_N = 4, Q_P = 3 at 3 bits
    assert len(codes) == 8
    assert torch.all(out[w > 2.0] == 1.5) and torch.all(out[w < -2.5] == -2.0)
    assert qrange(8) == (128, 127)
    with pytest.raises(FlatlensError):
        qrange(1)


def test_ste_and_lsq_step_gradients_match_closed_forms():
    bits = 4
    qn, qp = qrange(bits)
    w = torch.tensor([[-2.0, -0.33, 0.0, 0.26, 0.74, 1.9, 0.5]], requires_grad=True)
    q = LSQ(w.detach(), bits, per_channel=False)
    with torch.no_grad():
        q.step.fill_(0.2)
    out = q(w)
    out.sum().backward()
    v = w.detach() / 0.2
    inside = (v > -qn) & (v < qp)
    assert torch.equal(w.grad, inside.float())  # straight-through inside the clip range, 0 outside
    ds = torch.where(inside, torch.round(v) - v, torch.where(v <= -qn, torch.tensor(-qn * 1.0), torch.tensor(qp * 1.0)))
    g = 1 / math.sqrt(qp * w.numel())
    assert q.step.grad.item() == pytest.approx(float(ds.sum()) * g, rel=1e-6)


def test_per_channel_shapes_and_init():
    conv = nn.Conv2d(3, 5, 3)
    q = LSQ(conv.weight, 7, per_channel=True)
    assert q.step.shape == (5,)
    expect = 2 * conv.weight.detach().abs().reshape(5, -1).mean(1) / math.sqrt(63)
    assert torch.allclose(q.step, expect)
    assert LSQ(conv.weight, 7, per_channel=False).step.shape == ()
    assert q(conv.weight).shape == conv.weight.shape


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_at_most_2_pow_bits_levels_per_channel(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * 3
    s = init_step(w, bits, True)
    wq = fake_quantize(w, s, bits)
    for c in range(6):
        assert len(torch.unique(wq[c])) <= 2 ** bits


def test_quantize_model_skips_classifier_and_keeps_names():
    m = SmallCNN()
    names = quantize_model(m, 4)
    assert "classifier.weight" not in names and len(names) == 3
    sd, steps = latent_state(m)
    assert set(sd) == set(SmallCNN().state_dict())
    assert set(steps) == set(names) and steps["features.0.weight"].shape == (32,)
    custom = SmallCNN()
    assert quantize_model(custom, 4, layers=["classifier"]) == ["classifier.weight"]
    with pytest.raises(FlatlensError):
        quantize_model(SmallCNN(), 4, layers=["features.1"])  # a BatchNorm


def test_deployed_weights_equal_quantized_forward():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    quantize_model(m, 4)
    sd, steps = latent_state(m)
    plain = SmallCNN().eval()
    plain.load_state_dict(deployed_state_dict(sd, {"bits": 4, "steps": steps}))
    x = torch.randn(5, 1, 16, 16)
    assert torch.allclose(m(x), plain(x), atol=1e-6)


def test_size_accounting_and_integer_export():
    torch.manual_seed(0)
    m = SmallCNN()
    quantize_model(m, 4)
    sd, steps = latent_state(m)
    quant = {"bits": 4, "steps": steps}
    size = packed_size(sd, quant)
    fp32 = sum(v.numel() * 4 for v in sd.values() if v.is_floating_point())
    qw = sum(sd[n].numel() for n in steps)
    expect = fp32 - 4 * qw + sum(math.ceil(sd[n].numel() * 4 / 8) + steps[n].numel() * 4 for n in steps)
    assert size["fp32_bytes"] == fp32 and size["bytes"] == expect and size["ratio"] < 0.25
    exp = export_integer(sd, quant)
    dep = deployed_state_dict(sd, quant)
    for n in steps:
        codes = exp[n]["codes"]
        assert codes.dtype == torch.int8 and codes.min() >= -8 and codes.max() <= 7
        assert torch.allclose(codes.float() * exp[n]["step"].reshape(-1, 1, 1, 1), dep[n])
    assert packed_size(sd, None)["ratio"] == 1.0


def test_switch_preserves_function_at_8_bits():
    torch.manual_seed(1)
    m = SmallCNN().eval()
    x = torch.randn(16, 1, 16, 16)
    before = m(x).detach()
    quantize_model(m, 8)
    after = m(x).detach()
    assert (after - before).norm() / before.norm() < 0.08  # at random init; a trained net in test_train
    assert len(step_parameters(m)) == 3
