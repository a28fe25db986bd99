import dataclasses
import os

import pytest
import torch

from flatlens.checkpoint import build_model, load_checkpoint
from flatlens.data import rotated_digits
from flatlens.quant import step_parameters
from flatlens.train import TrainConfig, Trainer, ensemble_accuracy, train

DATA = rotated_digits()


def small_cfg(**kw):
    base = dict(steps=60, eval_every=20, quant_start=20, arch_kwargs={"width": 8}, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_after_the_switch_latent_weights_and_steps_both_move():
    tr = Trainer(small_cfg(bits=4, steps=40, quant_start=20), DATA, quiet=True)
    tr.run(stop_at=21)  # the switch happens before step 21
    assert tr.quantized_names
    steps = step_parameters(tr.model)
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert all(id(s) in opt_params for s in steps)
    latent = tr.model.features[0].parametrizations.weight.original
    assert id(latent) in opt_params
    s0 = [s.detach().clone() for s in steps]
    w0 = latent.detach().clone()
    tr.run(stop_at=30)
    assert all(not torch.equal(a, s.detach()) for a, s in zip(s0, steps))
    assert not torch.equal(w0, latent.detach())


def test_switch_keeps_outputs_close_on_a_trained_model():
    tr = Trainer(small_cfg(bits=8, steps=200, quant_start=150, arch_kwargs={}), DATA, quiet=True)
    tr.run(stop_at=150)
    x, _ = tr._probe_batch()
    tr.model.eval()
    with torch.no_grad():
        before = tr.model(x)
    tr.run(stop_at=150)  # no step taken
    tr.switch_to_quantized()
    tr.model.eval()
    with torch.no_grad():
        after = tr.model(x)
    # LSQ's initial step 2 mean|w| / sqrt(Q_P) is coarse at 8 bits (about 0.18 mean|w|): logits move by
    # ~13 % in norm, yet the predictions stay put
    assert (after - before).norm() / before.norm() < 0.25
    assert (after.argmax(1) == before.argmax(1)).float().mean() >= 0.95
    event = [h for h in tr.history if h.get("event") == "quantization on"][0]
    assert event["max_logit_change"] < event["mean_logit_scale"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_short_cpu_run_reaches_in_domain_accuracy(seed):
    # 300 steps of the digits CNN: observed >= 0.93 mean validation accuracy on every seed; bound 0.85
    ck = train(TrainConfig(steps=300, eval_every=100, seed=seed, bits=7, quant_start=120), quiet=True, data=DATA)
    assert ck.metrics["mean_val_acc"] >= 0.85, ck.metrics
    assert ck.metrics["selected_step"] >= 120  # a quantized step was selected


def test_deterministic_for_a_seed():
    a = train(small_cfg(), quiet=True, data=DATA)
    b = train(small_cfg(), quiet=True, data=DATA)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k


def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tmp_path):
    cfg = small_cfg(bits=4)
    full = tmp_path / "full.pt"
    train(cfg, str(full), quiet=True, data=DATA)
    part = tmp_path / "part.pt"
    assert train(small_cfg(bits=4), str(part), quiet=True, data=DATA, stop_at=40) is None  # interrupted
    assert os.path.exists(f"{part}.partial") and not part.exists()
    train(small_cfg(bits=4), str(part), quiet=True, data=DATA, resume=True)
    assert not os.path.exists(f"{part}.partial")
    a, b = load_checkpoint(full), load_checkpoint(part)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    for k in a.quant.steps:
        assert torch.equal(a.quant.steps[k], b.quant.steps[k])
    assert [h.get("val_acc") for h in a.history] == [h.get("val_acc") for h in b.history]
    # round trip: keys, plain tensors, loadable with weights_only, model builds at deployed weights
    raw = torch.load(full, weights_only=True)
    assert raw["format"] == "flatlens-checkpoint" and raw["quant"]["bits"] == 4
    assert raw["data"]["test_domains"] == ["75"] and raw["data"]["split_seed"] == 0
    assert set(raw) >= {"arch", "state_dict", "quant", "data", "train", "history", "metrics"}
    model = build_model(a)
    w = model.features[0].weight
    s = a.quant.steps["features.0.weight"].reshape(-1, 1, 1, 1)
    assert torch.allclose(w / s, torch.round(w / s), atol=1e-4)
    from flatlens.models import SmallCNN
    plain = SmallCNN(width=8)
    plain.load_state_dict(raw["state_dict"])  # latent weights under the original names


def test_resume_refuses_other_settings(tmp_path):
    from flatlens import FlatlensError
    out = tmp_path / "m.pt"
    train(small_cfg(), str(out), quiet=True, data=DATA, stop_at=20)
    with pytest.raises(FlatlensError, match="other settings"):
        train(small_cfg(lr=0.5), str(out), quiet=True, data=DATA, resume=True)


def test_eoq_ensemble(tmp_path):
    cks = []
    for seed in (0, 1, 2):
        p = tmp_path / f"q{seed}.pt"
        train(small_cfg(bits=7, seed=seed), str(p), quiet=True, data=DATA)
        cks.append(load_checkpoint(p))
    res = ensemble_accuracy(cks, split="both")
    assert set(res["ensemble"]) == {"test:75", "val:0", "val:15", "val:30", "val:45", "val:60"}
    assert res["packed_bytes"] == sum(c.metrics["packed_bytes"] for c in cks)
    # the ensemble's accuracy is a real majority of averaged probabilities: recompute one domain by hand
    x, y = DATA.tensors["75"]
    with torch.no_grad():
        p = torch.stack([torch.softmax(build_model(c)(x), 1) for c in cks]).mean(0)
    assert res["ensemble"]["test:75"] == pytest.approx(float((p.argmax(1) == y).float().mean()))


def test_frozen_batchnorm_keeps_running_statistics():
    tr = Trainer(small_cfg(freeze_bn=True, steps=5, eval_every=5), DATA, quiet=True)
    bn = tr.model.features[1]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    w0 = bn.weight.detach().clone()
    tr.run()
    assert not bn.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert not torch.equal(bn.weight.detach(), w0)  # the affine parameters still train


def test_pretrained_weights_fail_clearly_when_unavailable(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    from flatlens import FlatlensError
    from flatlens.models import build
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FlatlensError, match="not available offline"):
        build("resnet18", num_classes=3, pretrained=True)
    assert build("resnet18", num_classes=3).fc.out_features == 3


def test_settings_are_checked_by_the_one_range_rule_before_any_work():
    from flatlens import FlatlensError
    data = rotated_digits()
    for bad, match in (({"holdout": 1.0}, r"holdout must be a finite number in \(0, 1\)"),
                       ({"holdout": 0}, "holdout"), ({"steps": True}, "steps"), ({"steps": 2.5}, "steps"),
                       ({"lr": float("nan")}, "lr"), ({"weight_decay": -1e-4}, "weight_decay"),
                       ({"seed": -1}, r"seed must be a finite integer in \[0, ")):
        with pytest.raises(FlatlensError, match=match):
            TrainConfig(**bad).validate(data)
    for f in dataclasses.fields(TrainConfig):  # every setting of its type, booleans booleans ("true" is not)
        wrong = 3 if f.type in ("str", "str | None") else "true"  # a number for a string, a string for the rest
        with pytest.raises(FlatlensError, match=f"^{f.name} must be"):
            TrainConfig(**{f.name: wrong}).validate()
    cfg = TrainConfig(steps=40.0, batch_size=16)  # a JSON config's 40.0 is the integer 40
    cfg.validate(data)
    assert cfg.steps == 40 and isinstance(cfg.steps, int)


def test_the_command_line_trains_a_pair_from_one_prefix_full_precision_included(tmp_path, capsys):
    """`--quant-start` sets where a full-precision run's shared prefix ends (with --prefix), so a seed's pair can be
    trained from the command line; without --prefix or --bits it is refused; the message names the select rule."""
    from flatlens.cli import main
    common = ["train", "--steps", "12", "--eval-every", "6", "--width", "4", "--quant-start", "6", "--select", "last",
              "--prefix", str(tmp_path / "p.state")]
    assert main(common + ["--out", str(tmp_path / "fp.pt")]) == 0
    assert "selected by the last step (--select last)" in capsys.readouterr().out
    assert main(common + ["--bits", "4", "--out", str(tmp_path / "q4.pt")]) == 0
    fp, q4 = load_checkpoint(str(tmp_path / "fp.pt")), load_checkpoint(str(tmp_path / "q4.pt"))
    assert fp.pairing.prefix_step == q4.pairing.prefix_step == 6
    assert fp.pairing.prefix_sha256 == q4.pairing.prefix_sha256
    assert fp.quant is None and q4.quant.bits == 4
    assert main(["train", "--steps", "12", "--quant-start", "6", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--quant-start needs --bits, or --prefix" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.pt")
