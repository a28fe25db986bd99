"""Perturbation evaluation throughput: the same evaluations done three ways, in one run on one machine.

 (a) loss-landscape style: per point, build and load a perturbed state dict, then iterate a DataLoader whose
     dataset converts each sample as torchvision's ToTensor + Normalize do (uint8 HxW -> float, scaled);
 (b) a loop over cached tensors: per point, load_state_dict, then the resident batches, no_grad, eval;
 (c) flatlens: Evaluator(strategy="auto"), calibration included in the timing;
 (d) flatlens: Evaluator(strategy="compiled") in the layout (c) picked: torch.compile of the loop, timed with
     its compilation (first call) and again in steady state (second call), to show where it pays.
Reports evaluations per second, c/a, c/b, the achieved FLOP rate and its fraction of a dense fp32 matmul
rate measured in the same run. Model: the digits CNN (and ResNet-18 on 32x32 if torchvision is present).
Usage: python benchmarks/perturb_throughput.py [--points 128] [--json out.json]
"""
import argparse
import os
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(__file__))
from common import digits_inputs, loss_fn, machine, timed, trained_cnn, write_json  # noqa: E402

from flatlens import Objective  # noqa: E402
from flatlens.landscape import DirectionSpace, Evaluator  # noqa: E402
from flatlens.perturb.calibration import PickStore  # noqa: E402


class ConvertingDataset(Dataset):
    """Raw uint8 images converted per sample, as ToTensor + Normalize do (the loss-landscape code's input)."""

    def __init__(self, raw_u8: np.ndarray, labels: torch.Tensor, mean: float, std: float):
        self.raw, self.labels, self.mean, self.std = raw_u8, labels, mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = torch.from_numpy(np.ascontiguousarray(self.raw[i])).float().div(255.0)  # ToTensor
        if img.dim() == 2:
            img = img[None]
        else:
            img = img.permute(2, 0, 1)
        return (img - self.mean) / self.std, self.labels[i]  # Normalize


def matmul_flops_per_second(device, n=1024, reps=10):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _, t = timed(lambda: [a @ b for _ in range(reps)])
    return 2 * n ** 3 * reps / t


def forward_flops(model, x):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops()


def run(model, x, y, raw_u8, mean, std, device, points, label, batch=256, compiled=True):
    model = model.to(device).eval()
    obj = Objective(model, loss_fn(), [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)],
                    device=device)
    D = DirectionSpace(obj, "filter").make(0, range(points)) * 0.3
    center = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def perturbed_state(i):
        sd = dict(center)
        for n, d in obj.unflatten(D[i]).items():
            sd[n] = center[n] + d
        return sd

    crit = loss_fn()
    loader = DataLoader(ConvertingDataset(raw_u8, y, mean, std), batch_size=batch, shuffle=False)

    cached = [(xb.to(device), yb.to(device)) for xb, yb in obj.data.batches]

    def per_point_state_dict(n, batches):
        """Per point: load a perturbed state dict, then run `batches` (a DataLoader or cached tensors)."""
        out = []
        for i in range(n):
            model.load_state_dict(perturbed_state(i))
            tot, cnt = 0.0, 0
            with torch.no_grad():
                for xb, yb in batches:
                    xb, yb = xb.to(device), yb.to(device)
                    tot += float(crit(model(xb), yb)) * len(yb)
                    cnt += len(yb)
            out.append(tot / cnt)
        model.load_state_dict(center)
        return out

    def way_a(n):
        return per_point_state_dict(n, loader)

    def way_b(n):
        return per_point_state_dict(n, cached)

    def way_c(n):
        PickStore.memo.clear()  # calibration included
        ev = Evaluator(obj, strategy="auto")
        lo, _ = ev(D[:n])
        return lo.tolist(), ev

    n_a = max(4, points // 8)  # (a) is slow: time fewer points, report per-point rates
    way_b(2)
    (la, ta) = timed(way_a, n_a)
    (lb, tb) = timed(way_b, points)
    ((lc, ev), tc) = timed(way_c, points)
    if compiled:
        ev_d = Evaluator(obj, strategy="compiled", channels_last=ev.channels_last, batch_size=ev.batch_size)
        ((ld, _), td_first) = timed(ev_d, D)
        (_, td) = timed(ev_d, D)
        np.testing.assert_allclose(ld.tolist(), lc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lb, lc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(la, lc[:n_a], rtol=1e-4, atol=1e-5)
    # what makes the loop fast: inference mode + in-place weights (c, loop) vs channels_last on top
    loop_rates = {}
    for cl in (False, True):
        o2 = Objective(model, loss_fn(), [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)],
                       device=device)
        ev2 = Evaluator(o2, strategy="loop", channels_last=cl)
        ev2(D[:2])
        _, t2 = timed(ev2, D[:points // 2])
        loop_rates["channels_last" if cl else "contiguous"] = (points // 2) / t2
    fl = forward_flops(model, x.to(device)) * 1.0
    mm = matmul_flops_per_second(device)
    ra, rb, rc = n_a / ta, points / tb, points / tc
    return {"label": label, "num_params": obj.num_params, "n_inputs": len(y), "points": points,
            "evals_per_second": {"a_loss_landscape_style": ra, "b_cached_loop": rb, "c_flatlens_auto": rc},
            "d_flatlens_compiled": ({"evals_per_second_including_compilation": points / td_first,
                                     "evals_per_second_steady": points / td, "compile_seconds": ev_d.compile_seconds,
                                     "steady_over_c": (points / td) / rc,
                                     "points_to_break_even": (ev_d.compile_seconds / (1 / rc - td / points)
                                                              if td / points < 1 / rc else None)}
                                    if compiled else {"run": False}),
            "c_over_a": rc / ra, "c_over_b": rc / rb, "strategy": ev.describe()["strategy"],
            "calibration": ev.calibration, "forward_flops_per_eval": fl, "loop_memory_format": loop_rates,
            "achieved_flops_per_second": fl * rc, "matmul_flops_per_second": mm,
            "fraction_of_matmul_rate": fl * rc / mm}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"machine": machine(), "runs": []}
    x, y = digits_inputs(1024)
    # the raw images the converting dataset starts from: uint8 in [0, 255], normalized back to x
    raw = ((x * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    xq = (torch.from_numpy(raw).float()[:, None] / 255.0 - 0.5) / 0.5
    results["runs"].append(run(trained_cnn(), xq, y, raw, 0.5, 0.5, device, args.points, f"digits CNN, {device}"))
    try:
        import torchvision
        g = torch.Generator().manual_seed(0)
        raw_rgb = torch.randint(0, 256, (256, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
        xr = (torch.from_numpy(raw_rgb).float().permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
        yr = torch.randint(0, 10, (256,), generator=g)
        m = torchvision.models.resnet18(num_classes=10)
        results["runs"].append(run(m, xr, yr, raw_rgb, 0.5, 0.25, device, max(16, args.points // 2),
                                   f"ResNet-18 32x32, {device}", batch=128))
    except ImportError:
        pass
    for r in results["runs"]:
        e = r["evals_per_second"]
        print(f"== {r['label']}: {r['num_params']} parameters, {r['n_inputs']} inputs, {r['points']} points ==")
        print(f"evals/s: (a) loss-landscape style {e['a_loss_landscape_style']:.2f}, (b) cached loop "
              f"{e['b_cached_loop']:.2f}, (c) flatlens auto [{r['strategy']}] {e['c_flatlens_auto']:.2f}")
        print(f"c/a = {r['c_over_a']:.2f}, c/b = {r['c_over_b']:.2f}; achieved {r['achieved_flops_per_second'] / 1e9:.2f}"
              f" GFLOP/s = {100 * r['fraction_of_matmul_rate']:.1f} % of a dense fp32 matmul "
              f"({r['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s)")
        d = r["d_flatlens_compiled"]
        if d.get("run", True):
            print(f"(d) compiled: {d['evals_per_second_including_compilation']:.2f} evals/s with its "
                  f"{d['compile_seconds']:.1f} s compilation, {d['evals_per_second_steady']:.2f} steady "
                  f"({d['steady_over_c']:.2f}x (c)); break-even after "
                  f"{'never' if d['points_to_break_even'] is None else round(d['points_to_break_even'])} points")
        lm = r["loop_memory_format"]
        print(f"loop evals/s: contiguous {lm['contiguous']:.2f}, channels_last {lm['channels_last']:.2f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
