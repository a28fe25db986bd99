import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import workers
from flatlens import landscape, sharpness


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_single_process(tmp_path):
    out = tmp_path / "dist.json"
    torch.multiprocessing.spawn(workers.distributed_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    single = workers.flatness(workers.digits_objective())
    np.testing.assert_array_equal(np.array(got["flatness"]), np.array(single.increases))
    surf = landscape.random_surface(workers.digits_objective(), [-0.5, 0.0, 0.5], [0.0, 1.0], kind="filter",
                                    seed=1, strategy="loop", chunk=2)
    np.testing.assert_array_equal(np.array(got["surface"]), np.array(surf.losses))


def _chunks(store):
    """The chunk files of the one run stored under `store` (its keyed subfolder)."""
    runs = [d for d in os.listdir(store) if os.path.isdir(os.path.join(store, d))]
    return [os.path.join(store, r, f) for r in runs for f in sorted(os.listdir(os.path.join(store, r)))
            if f.startswith("chunk-")]


def test_rerun_skips_completed_chunks_and_checks_their_integrity(tmp_path):
    obj = workers.digits_objective()
    store = tmp_path / "chunks"
    first = workers.flatness(obj, store=str(store))
    files = _chunks(store)
    assert len(files) == 12
    calls = []
    orig = landscape.Evaluator.__call__

    def counting(self, deltas):
        calls.append(len(deltas))
        return orig(self, deltas)

    landscape.Evaluator.__call__ = counting
    try:
        again = workers.flatness(obj, store=str(store))
    finally:
        landscape.Evaluator.__call__ = orig
    assert calls == [] and again.increases == first.increases
    # a damaged chunk, and a whole chunk whose numbers were edited, are recomputed, not trusted
    open(files[0], "wb").write(b"garbage")
    d = torch.load(files[1], weights_only=True)
    d["inc"] = d["inc"] + 1.0
    torch.save(d, files[1])
    counts = {}
    from flatlens.perturb.runner import run_chunks
    orig_run = run_chunks
    import flatlens.sharpness.flatness as flat_mod
    flat_mod.run_chunks = lambda *a, **k: orig_run(*a, counts=counts, **k)
    try:
        assert workers.flatness(obj, store=str(store)).increases == first.increases
    finally:
        flat_mod.run_chunks = orig_run
    assert counts == {"loaded": 10, "computed": 2, "rejected": 2}


def test_a_store_reused_for_another_checkpoint_recomputes(tmp_path):
    store = tmp_path / "chunks"
    a = workers.digits_objective()
    b = workers.digits_objective(seed=1)  # another model: its own chunks, never a's
    fa = workers.flatness(a, store=str(store))
    fb = workers.flatness(b, store=str(store))
    assert fa.increases != fb.increases
    assert fb.increases == workers.flatness(workers.digits_objective(seed=1)).increases
    assert len([d for d in os.listdir(store)]) == 2


@pytest.mark.slow
def test_sigkilled_run_resumed_equals_uninterrupted(tmp_path):
    store = tmp_path / "killed"
    here = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, os.path.join(here, "workers.py"), str(store)],
                            env={**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")})
    deadline = time.time() + 120
    while time.time() < deadline:
        if store.exists() and len(_chunks(store)) >= 5:
            break
        if proc.poll() is not None:
            pytest.fail("worker ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_chunks(store))
    assert 5 <= done < 400
    torch.set_num_threads(1)
    obj = workers.digits_objective(n=1000)
    resumed = sharpness.local_flatness(obj, [0.0, 0.5, 1.0], n_directions=400, seed=3, strategy="loop",
                                       directions_per_chunk=1, store=str(store))
    whole = sharpness.local_flatness(obj, [0.0, 0.5, 1.0], n_directions=400, seed=3, strategy="loop",
                                     directions_per_chunk=100)
    torch.set_num_threads(2)
    np.testing.assert_array_equal(np.array(resumed.increases), np.array(whole.increases))
