"""Every accelerator measurement in one command, one JSON (run it once whenever a GPU is lent; under 8 minutes
on one H100 at full size). `--tiny --device cpu` runs the same code paths in seconds, so the suite cannot rot
(tests/test_benchmarks.py does).

  device        the card, torch, and its dense matmul rate in fp32, tf32 and bf16 (measured here)
  perturbation  evaluations per second of the digits CNN and ResNet-18: loss-landscape-style loop (state dict +
                DataLoader per point), state-dict loop over cached tensors, flatlens `auto`, flatlens `compiled`
                (torch.compile, CUDA graphs on a GPU: with and without its compilation); achieved FLOP/s as a
                fraction of the fp32 matmul rate (benchmarks/perturb_throughput.py)
  precision     flatlens's evaluator in fp32, tf32 and bf16 on ResNet-18: evals/s and the largest loss error
  hvp           one HVP against one gradient; a block of HVPs pushed through one vmapped backward against
                one at a time, with their largest difference; SLQ runs in lockstep against one after another
  hessian       ResNet-18: top eigenvalue to 1e-3 against PyHessian at equal accuracy, trace to a 2 % CI
                (Hutch++ against Hutchinson) (benchmarks/hessian_vs_pyhessian.py)
  sharding      flatness points sharded over NCCL ranks (two or more GPUs): equal to one process, and the time
Each section runs on its own: one that fails records its error and the rest still run (exit status 1); the
JSON is rewritten after every section, so a run cut short keeps what it measured; sections not started by
--budget seconds (default 450) are skipped and say so.
Usage: python benchmarks/gpu_suite.py [--tiny] [--device cuda] [--out $OUT/gpu_suite.json] [--budget 450]
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import hessian_vs_pyhessian as HVP  # noqa: E402
import perturb_throughput as PT  # noqa: E402
from common import digits_inputs, loss_fn, machine, timed, trained_cnn  # noqa: E402

from flatlens import Objective  # noqa: E402
from flatlens.perturb import DirectionSpace, Evaluator  # noqa: E402

SECTIONS = ("device", "perturbation", "precision", "hvp", "hessian", "sharding", "fashion_paired")
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def matmul_rates(device, n):
    out = {"fp32": PT.matmul_flops_per_second(device, n)}
    if device == "cuda":
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        out["tf32"] = PT.matmul_flops_per_second(device, n)
        torch.set_float32_matmul_precision(old)
    else:
        out["tf32"] = None  # no TF32 on a CPU
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    _, t = timed(lambda: [a @ b for _ in range(10)])
    out["bf16"] = 2 * n ** 3 * 10 / t
    return out


def resnet18_data(n, size, device):
    import torchvision
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8).numpy()
    x = (torch.from_numpy(raw).float().permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    y = torch.randint(0, 10, (n,), generator=g)
    return torchvision.models.resnet18(num_classes=10).eval(), x, y, raw


def precision_modes(model, x, y, device, points):
    obj = Objective(model, loss_fn(), (x, y), device=device)
    D = DirectionSpace(obj, "filter").make(0, range(points)) * 0.2
    ref = None
    out = {}
    for p in ("fp32", "tf32", "bf16"):
        ev = Evaluator(obj, strategy="loop", precision=p)
        ev(D[:1])
        (lo, _), t = timed(ev, D)
        if ref is None:
            ref = lo
        out[p] = {"evals_per_second": points / t, "max_abs_loss_error_vs_fp32": float((lo - ref).abs().max()),
                  "evaluator_reported_error": ev.precision_error}
    return out


def hvp_section(model, x, y, device, block):
    obj = Objective(model, loss_fn(), (x, y), device=device)
    v = torch.randn(obj.num_params, device=device)
    obj.hvp(v)
    obj.grad_at()
    th = min(timed(obj.hvp, v)[1] for _ in range(3))
    tg = min(timed(obj.grad_at)[1] for _ in range(3))
    V = torch.randn(block, obj.num_params, device=device, dtype=obj.dtype)
    single = obj.hvp_many(V, batched=False)
    batched = obj.hvp_many(V, batched=True)
    _, ts = timed(obj.hvp_many, V, batched=False)
    _, tb = timed(obj.hvp_many, V, batched=True)
    from flatlens import hessian
    slq_iter = 3 if block <= 2 else 20
    d1, t1 = timed(hessian.density, obj, n_iter=slq_iter, n_runs=block, seed=0, batched=False)
    d2, t2 = timed(hessian.density, obj, n_iter=slq_iter, n_runs=block, seed=0, batched=True)
    slq = {"n_iter": slq_iter, "n_runs": block, "one_by_one_seconds": t1, "lockstep_seconds": t2,
           "lockstep_speedup": t1 / t2,
           "max_abs_node_difference": float(max(abs(a - b) for x, y in zip(d1.nodes, d2.nodes) for a, b in zip(x, y)))}
    return {"slq": slq, "hvp_seconds": th, "grad_seconds": tg, "hvp_over_grad": th / tg, "block": block,
            "single_seconds_per_hvp": ts / block, "batched_seconds_per_hvp": tb / block, "batched_speedup": ts / tb,
            "max_abs_difference": float((single - batched).abs().max()), "hvp_mode": obj.hessian_op.mode,
            "auto_pick_batched": obj.hessian_op.batched_hvps_pay()}


def sharding_section(device, tiny):
    n = torch.cuda.device_count() if device == "cuda" else 0
    if n < 2:
        return {"run": False, "reason": f"{n} GPU(s): NCCL sharding needs two or more"}
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(os.environ.get("OUT", "/tmp"), "sharding.json")
    t0 = time.perf_counter()
    torch.multiprocessing.spawn(_shard_rank, args=(n, port, out, tiny), nprocs=n, join=True)
    t_sharded = time.perf_counter() - t0
    got = json.load(open(out))
    t0 = time.perf_counter()
    single = _flatness(_digits_objective("cuda"), tiny)
    t_single = time.perf_counter() - t0
    return {"run": True, "world_size": n, "equal_to_single_process": got["increases"] == single.increases,
            "seconds_sharded": t_sharded, "seconds_single": t_single}


def _digits_objective(device):
    x, y = digits_inputs(1024)
    torch.manual_seed(0)
    from flatlens.models import SmallCNN
    return Objective(SmallCNN(width=32), loss_fn(), (x, y), device=device)


def _flatness(obj, tiny):
    from flatlens import sharpness
    return sharpness.local_flatness(obj, [0.0, 1.0, 2.0], n_directions=8 if tiny else 256, seed=0,
                                    strategy="loop", directions_per_chunk=4)


def _shard_rank(rank, world, port, out, tiny):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    res = _flatness(_digits_objective(f"cuda:{rank}"), tiny)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"increases": res.increases}, fh)
    dist.barrier()
    dist.destroy_process_group()


def fashion_paired_section(device, tiny, root, out_dir):
    """The main job's paired design on Rotated Fashion-MNIST at full size (70,000 28 x 28 images, six rotated
    domains), where the idx files and an accelerator are present: full precision and 7 / 2-bit QAT of a few seeds,
    each seed's runs branched from one prefix, measured with common random numbers, and the confirmatory family's
    tests. Skipped, with the reason, otherwise."""
    if device == "cpu":
        return {"run": False, "reason": "needs an accelerator (Rotated Fashion-MNIST at 28 px trains for minutes on a "
                                        "CPU)"}
    from flatlens import FlatlensError
    from flatlens.data.fashion import locate
    try:
        locate(root)  # the loader's own resolution: the folder itself or torchvision's FashionMNIST/raw under it
    except FlatlensError as e:
        return {"run": False, "reason": str(e)}
    from flatlens.reproduce import Plan, plan_settings, run as reproduce_run, with_family
    plan = with_family(Plan(dataset="rotated-fashion-mnist", data_root=root, image_size=None, domains=("75",),
                            seeds=tuple(range(2 if tiny else 6)), explore_seeds=1,
                            configs=(("fp32", None), ("q7", 7), ("q2", 2)), steps=60 if tiny else 2000,
                            quant_start=24 if tiny else 800, eval_every=30 if tiny else 500, width=32,
                            settings=plan_settings("quick" if tiny else "full", 256 if tiny else 2048)))
    t0 = time.perf_counter()
    res = reproduce_run(os.path.join(out_dir, "fashion_paired"), plan=plan, device=device, jobs=1, quiet=True,
                        figures=False)
    return {"seconds": time.perf_counter() - t0, "models": len(res.models), "seeds": len(plan.seeds),
            "claims": [{"key": c.spec.key, "verdict": c.verdict, "relative": c.test.relative,
                        "p": c.test.difference.p, "p_equiv": c.test.equivalence.p if c.test.equivalence else None,
                        "p_diff_adj": c.p_diff_adj, "p_equiv_adj": c.p_equiv_adj} for c in res.analysis.claims]}


def _write(res, path):
    """The JSON as it stands, replaced atomically: a run cut short (a device lease ends) keeps what it measured."""
    res["seconds"] = time.perf_counter() - res["_t0"]
    tmp = path + ".partial"
    with open(tmp, "w") as fh:
        json.dump({k: v for k, v in res.items() if k != "_t0"}, fh, indent=1,
                  default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
    os.replace(tmp, path)


def _section(res, path, budget, keys, fn):
    """Run one section into res[keys...]: skipped past the time budget, its error recorded (not raised) so the
    sections after it still run, the JSON rewritten after it."""
    *parents, key = keys
    where = res
    for k in parents:
        where = where.setdefault(k, {})
    if time.perf_counter() - res["_t0"] > budget:
        where[key] = {"run": False, "reason": f"skipped: past the {budget:.0f} s budget"}
    else:
        t0 = time.perf_counter()
        try:
            where[key] = fn()
        except Exception as e:  # a benchmark measures; one failing section must not lose the others
            where[key] = {"run": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        res.setdefault("section_seconds", {})["/".join(keys)] = time.perf_counter() - t0
    _write(res, path)


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small sizes: the code paths in seconds (CPU test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", os.path.join(os.path.dirname(__file__),
                                                                                        "results")), "gpu_suite.json"))
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds after which the sections not yet started are skipped (default 450)")
    ap.add_argument("--fashion-root", default=FASHION_ROOT,
                    help=f"the Fashion-MNIST idx files for the paired-design section (default {FASHION_ROOT})")
    a = ap.parse_args()
    dev, tiny, path = a.device, a.tiny, a.out
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    res = {"_t0": time.perf_counter(), "machine": machine(),
           "device_name": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "tiny": tiny,
           "date": time.strftime("%Y-%m-%d"), "budget_seconds": a.budget}

    def run(keys, fn):
        _section(res, path, a.budget, keys, fn)

    run(["device"], lambda: {"matmul_flops_per_second": matmul_rates(dev, 256 if tiny else 8192)})
    x, y = digits_inputs(128 if tiny else 2048)
    raw = ((x * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    xq = (torch.from_numpy(raw).float()[:, None] / 255.0 - 0.5) / 0.5
    cnn = trained_cnn(steps=20 if tiny else 150)
    # tiny (the CPU test): no torch.compile, whose first compilation alone took tens of seconds here; the compiled
    # path is tested by tests/test_landscape.py, and runs in the full suite
    run(["perturbation", "digits_cnn"], lambda: PT.run(cnn, xq, y, raw, 0.5, 0.5, dev, 8 if tiny else 256,
                                                       f"digits CNN, {dev}", batch=64 if tiny else 256,
                                                       compiled=not tiny))
    try:
        rn, xr, yr, rawr = resnet18_data(16 if tiny else 512, 16 if tiny else 32, dev)
    except ImportError:
        for keys in (["perturbation", "resnet18"], ["precision"], ["hvp"], ["hessian"]):
            run(keys, lambda: {"run": False, "reason": "torchvision is not installed"})
    else:
        hx, hy = xr[: 8 if tiny else 256], yr[: 8 if tiny else 256]
        run(["perturbation", "resnet18"], lambda: PT.run(
            rn, xr, yr, rawr, 0.5, 0.25, dev, 4 if tiny else 32, f"ResNet-18, {dev}", batch=16 if tiny else 128,
            compiled=not tiny))
        run(["precision"], lambda: precision_modes(rn, xr, yr, dev, 4 if tiny else 32))
        run(["hvp"], lambda: hvp_section(rn, hx, hy, dev, 2 if tiny else 8))
        # tiny: the same code on the digits CNN (ResNet-18's HVPs took 76 s of the CPU test's 88)
        run(["hessian"], lambda: HVP.run(cnn, xq[:64], y[:64], dev, 1, 12, f"digits CNN, {dev}", parts="aef",
                                         repeats=1, trace_rtol=0.5, max_hvp=30) if tiny else
            HVP.run(rn, hx, hy, dev, 1, 64, f"ResNet-18, {dev}", parts="aef", repeats=3, trace_rtol=0.02,
                    max_hvp=5000))
    run(["sharding"], lambda: sharding_section(dev, tiny))
    run(["fashion_paired"], lambda: fashion_paired_section(dev, tiny, a.fashion_root,
                                                            os.path.dirname(os.path.abspath(path))))
    _write(res, path)
    failed = [k for k, v in res.items() if isinstance(v, dict) and ("error" in v or any(
        isinstance(w, dict) and "error" in w for w in v.values()))]
    print(f"wrote {path} ({res['seconds']:.0f} s)" + (f"; sections with errors: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
