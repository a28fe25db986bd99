"""The data axis: HVP throughput and Lanczos time of one process against W processes (gloo on CPUs, NCCL on
GPUs), one thread each, on the digits CNN over the same inputs. Reports seconds per HVP, the top eigenvalue's
time to 1e-6 (the same HVP count in every world size) and the scaling ratio time(1) / time(W).
Usage: python benchmarks/distributed_scaling.py [--world 2] [--inputs 2048] [--hvps 20] [--json out.json]"""
import argparse
import json
import os
import socket
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import digits_inputs, loss_fn, machine, trained_cnn, write_json  # noqa: E402


def _work(world, inputs, hvps, device):
    from flatlens import Objective, hessian
    torch.manual_seed(0)
    x, y = digits_inputs(inputs)
    obj = Objective(trained_cnn(), loss_fn(), (x, y), device=device, data_parallel=world > 1)
    v = torch.randn(obj.num_params, device=obj.device)
    obj.hvp(v)  # graph built, warm
    t0 = time.perf_counter()
    for _ in range(hvps):
        obj.hvp(v)
    t_hvp = (time.perf_counter() - t0) / hvps
    obj.hessian_op.release_graph()
    t0 = time.perf_counter()
    r = hessian.top_eigenvalues(obj, 1, tol=1e-6)
    return {"world_size": world, "seconds_per_hvp": t_hvp, "lanczos_seconds": time.perf_counter() - t0,
            "lanczos_hvps": r.n_hvp, "top_eigenvalue": r.values[0], "samples_per_rank": obj.data.samples_per_rank}


def _rank(rank, world, port, inputs, hvps, out, backend):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    res = _work(world, inputs, hvps, device)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(res, fh)
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--inputs", type=int, default=2048)
    ap.add_argument("--hvps", type=int, default=20)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "distributed_scaling_cpu.json"))
    a = ap.parse_args()
    backend = "nccl" if torch.cuda.device_count() >= a.world else "gloo"
    torch.set_num_threads(1)
    one = _work(1, a.inputs, a.hvps, "cuda" if backend == "nccl" else "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = a.json + ".rank0"
    torch.multiprocessing.spawn(_rank, args=(a.world, port, a.inputs, a.hvps, tmp, backend), nprocs=a.world, join=True)
    many = json.load(open(tmp))
    os.unlink(tmp)
    n_inputs = len(digits_inputs(a.inputs)[1])  # the digits data set caps the request (1,797 samples)
    out = {"machine": machine(), "backend": backend, "inputs_requested": a.inputs, "inputs": n_inputs,
           "one_process": one, "world": many,
           "hvp_scaling": one["seconds_per_hvp"] / many["seconds_per_hvp"],
           "lanczos_scaling": one["lanczos_seconds"] / many["lanczos_seconds"],
           "top_eigenvalue_rel_diff": abs(many["top_eigenvalue"] / one["top_eigenvalue"] - 1)}
    print(f"{backend}, {n_inputs} inputs: one process {1000 * one['seconds_per_hvp']:.0f} ms per HVP, {a.world} "
          f"processes {1000 * many['seconds_per_hvp']:.0f} ms: {out['hvp_scaling']:.2f}x; Lanczos to 1e-6 "
          f"{one['lanczos_seconds']:.2f} s vs {many['lanczos_seconds']:.2f} s ({one['lanczos_hvps']} and "
          f"{many['lanczos_hvps']} HVPs): {out['lanczos_scaling']:.2f}x; top eigenvalues differ by "
          f"{out['top_eigenvalue_rel_diff']:.1e} relative")
    write_json(a.json, out)


if __name__ == "__main__":
    main()
