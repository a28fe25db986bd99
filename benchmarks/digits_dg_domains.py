"""digits-dg: what building it costs, and how far apart its domains are.

1. Build time of the whole benchmark in a fresh process (imports of flatlens and torch excluded, the packaged
   sources' reading and scikit-learn's import included): 28 px, then 16 px from scratch (uncached).
2. The domain gap: the digits CNN trained on `mnist` alone (its 80 % in-split; Adam, fixed seeds), then its
   accuracy on mnist's held-out 20 % and on every other domain (all images). tests/test_digits_dg.py asserts
   on this same function.
Usage: python benchmarks/digits_dg_domains.py [--image-size 16] [--steps 300] [--json out.json]
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # noqa: E402

BUILD = ("import time; from flatlens.data.digits_dg import build; t0 = time.perf_counter(); build(28); "
         "t1 = time.perf_counter(); build(16); print(t1 - t0, time.perf_counter() - t1)")


def build_seconds() -> dict:
    out = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, check=True).stdout.split()
    return {"28": float(out[0]), "16_uncached": float(out[1])}


def mnist_trained_accuracy(image_size=16, steps=300, width=16, batch=64, lr=1e-3, seed=0) -> dict:
    """{domain: accuracy} of a small CNN trained on mnist's in-split only; 'mnist' is its held-out out-split."""
    from flatlens.data import load, split_indices
    from flatlens.models import build
    data = load("digits-dg", image_size=image_size)
    x, y = data.tensors["mnist"]
    idx_in, idx_out = split_indices(len(x), data.index("mnist"), seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build("small_cnn", in_channels=1, num_classes=10, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        pick = idx_in[torch.randint(len(idx_in), (batch,), generator=gen)]
        loss = F.cross_entropy(model(x[pick]), y[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    acc = {}
    with torch.no_grad():
        for d in data.domains:
            xs, ys = (x[idx_out], y[idx_out]) if d == "mnist" else data.tensors[d]
            acc[d] = float((model(xs).argmax(1) == ys).float().mean())
    return acc


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    from flatlens.data import load
    seconds = build_seconds()
    sizes = {d: len(load("digits-dg").tensors[d][1]) for d in load("digits-dg").domains}
    t0 = time.perf_counter()
    acc = mnist_trained_accuracy(args.image_size, args.steps)
    train_s = time.perf_counter() - t0
    print(f"build: {seconds['28']:.2f} s at 28 px, {seconds['16_uncached']:.2f} s at 16 px (uncached)")
    print(f"mnist-trained small CNN ({args.steps} steps, {args.image_size} px, {train_s:.1f} s):")
    print("| domain | images | accuracy | drop vs mnist |")
    print("|---|---|---|---|")
    for d, a in acc.items():
        print(f"| {d} | {sizes[d]} | {100 * a:.1f} % | {100 * (acc['mnist'] - a):.1f} pp |")
    write_json(args.json, {"machine": machine(), "build_seconds": seconds, "sizes": sizes,
                           "image_size": args.image_size, "steps": args.steps, "accuracy": acc,
                           "train_seconds": train_s})


if __name__ == "__main__":
    main()
