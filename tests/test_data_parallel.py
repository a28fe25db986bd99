"""The data axis over torch.distributed: two gloo processes on this CPU, each holding a shard of the data, give
the same loss, gradient, HVP, GGN and empirical-Fisher products, eigenvalues, trace, SLQ density, diagonal and
flatness as one process over all the data (1e-12 relative in float64, 1e-5 in float32), uneven shards included; a
failing rank stops the others;
`torchrun -m flatlens hessian` writes the single-process numbers."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _objective(dtype, data_parallel):
    from flatlens import Objective
    from nets import image_data, tiny_cnn, tiny_mlp, vector_data
    if dtype == torch.float64:  # 61 samples: shards of 31 and 30
        x, y = vector_data(61, dtype=torch.float64)
        return Objective(tiny_mlp(), nn.CrossEntropyLoss(), [(x[:25], y[:25]), (x[25:], y[25:])],
                         data_parallel=data_parallel, hvp_batch_size=None)
    x, y = image_data(45, dtype=torch.float32)
    return Objective(tiny_cnn(dtype=torch.float32), nn.CrossEntropyLoss(), (x, y), data_parallel=data_parallel)


def measure_all(obj):
    from flatlens import hessian, sharpness
    v = torch.linspace(-1, 1, obj.num_params, dtype=obj.dtype)
    f, g = obj.grad_at()
    eig = hessian.top_eigenvalues(obj, 2, tol=1e-10)
    tr = hessian.trace(obj, rtol=0.05, seed=3)
    dens = hessian.density(obj, n_iter=6, n_runs=2, seed=1)
    diag = hessian.diagonal(obj, n_probes=4, seed=2)
    flat = sharpness.local_flatness(obj, [0.0, 0.5], n_directions=3, seed=4, strategy="loop")
    ggn = hessian.ggn(obj).hvp(v)
    fisher = hessian.fisher(obj, labels="empirical").hvp(v)
    return {"ggn": ggn.tolist(), "fisher": fisher.tolist(), "loss": obj.loss(), "accuracy": obj.accuracy(), "loss_at": obj.loss_at({}), "f": f,
            "grad": obj.flatten(g).tolist(), "hvp": obj.hvp(v).tolist(), "eig": eig.values, "eig_hvp": eig.n_hvp,
            "trace": tr.value, "trace_hvp": tr.n_hvp, "per_layer": [d["value"] for d in tr.per_layer.values()],
            "density": dens.density[::50], "diag": diag.values, "flatness": flat.increases,
            "world": obj.describe()["world_size"], "per_rank": obj.describe()["samples_per_rank"],
            "fingerprint": obj.fingerprint(), "graph_bytes": obj.hessian_op.graph_bytes_estimate}


def _rank(rank, world, port, out, dtype_name, fail_rank):
    import torch.distributed as dist
    sys.path.insert(0, HERE)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if rank == fail_rank:
        raise RuntimeError("this rank fails on purpose")
    res = measure_all(_objective(getattr(torch, dtype_name), True))
    with open(f"{out}.{rank}", "w") as fh:
        json.dump(res, fh)
    dist.barrier()
    dist.destroy_process_group()


def _flat(x):
    return np.asarray([v for v in np.asarray(x, dtype=object).ravel()], dtype=float) if not isinstance(x, (int, float)) \
        else np.asarray([x], dtype=float)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_two_gloo_ranks_equal_one_process(dtype, rtol, tmp_path):
    out = str(tmp_path / "r.json")
    torch.multiprocessing.spawn(_rank, args=(2, _port(), out, dtype, -1), nprocs=2, join=True)
    ranks = [json.load(open(f"{out}.{r}")) for r in range(2)]
    single = measure_all(_objective(getattr(torch, dtype), False))
    assert ranks[0]["world"] == 2 and sum(ranks[0]["per_rank"]) == (61 if dtype == "float64" else 45)
    assert abs(ranks[0]["per_rank"][0] - ranks[0]["per_rank"][1]) == 1  # uneven shards
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    for key in ("loss", "accuracy", "loss_at", "f", "grad", "hvp", "eig", "trace", "per_layer", "density", "diag",
                "flatness", "ggn", "fisher"):
        a, b = np.asarray(ranks[0][key], float).ravel(), np.asarray(single[key], float).ravel()
        # flatness values are differences of losses: their error is the losses' (relative to F, not to them)
        scale = max(1.0, single["loss"]) if key == "flatness" else max(1.0, np.abs(b).max()) * 1e-3
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=key)
        np.testing.assert_array_equal(np.asarray(ranks[1][key], float), np.asarray(ranks[0][key], float),
                                      err_msg=key)  # every rank holds the same result
    assert ranks[0]["eig_hvp"] == single["eig_hvp"] and ranks[0]["trace_hvp"] == single["trace_hvp"]
    # each rank sizes its HVP graph (retained or recomputed) for its own shard: the shares add up to the whole
    shares = [r["graph_bytes"] for r in ranks]
    assert all(shares) and sum(shares) == pytest.approx(single["graph_bytes"], rel=0.05)


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank(tmp_path):
    import time
    t0 = time.time()
    with pytest.raises(Exception, match="fails on purpose"):
        torch.multiprocessing.spawn(_rank, args=(2, _port(), str(tmp_path / "r"), "float64", 1), nprocs=2, join=True)
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_torchrun_hessian_writes_the_single_process_json(tmp_path):
    from flatlens.pipeline import MeasurementRun
    from flatlens.train import TrainConfig, train
    ck = tmp_path / "m.pt"
    train(TrainConfig(steps=20, eval_every=20, arch_kwargs={"width": 4}), str(ck), quiet=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLATLENS_QUIET": "1"}
    args = ["hessian", str(ck), "--metric", "hessian-trace", "--samples", "101", "--split", "both"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_port()), "-m", "flatlens", *args, "--json", str(tmp_path / "dist.json")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Hessian trace") == 2  # rank 0 prints (one line per split), rank 1 does not
    r1 = subprocess.run([sys.executable, "-m", "flatlens", *args, "--json", str(tmp_path / "one.json")],
                        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r1.returncode == 0, r1.stderr[-2000:]
    dist, one = MeasurementRun.from_json(tmp_path / "dist.json"), MeasurementRun.from_json(tmp_path / "one.json")
    for a, b in zip(dist.records, one.records):
        assert a.objective["world_size"] == 2 and b.objective["world_size"] == 1
        assert a.result.n_hvp == b.result.n_hvp
        np.testing.assert_allclose(a.result.value, b.result.value, rtol=1e-5)
        np.testing.assert_allclose(a.row("trace").interval, b.row("trace").interval, rtol=1e-4)
