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
from flatlens import FlatlensError, landscape, sharpness


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


def test_rerun_skips_completed_chunks(tmp_path):
    obj = workers.digits_objective()
    store = tmp_path / "chunks"
    first = workers.flatness(obj, store=str(store))
    files = sorted(f for f in os.listdir(store) if f.startswith("chunk-"))
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
    # a damaged chunk is recomputed, not trusted
    (store / files[0]).write_bytes(b"garbage")
    assert workers.flatness(obj, store=str(store)).increases == first.increases
    with pytest.raises(FlatlensError, match="other arguments"):
        sharpness.local_flatness(obj, [0.0, 2.0], n_directions=12, seed=3, store=str(store))


@pytest.mark.slow
def test_sigkilled_run_resumed_equals_uninterrupted(tmp_path):
    store = tmp_path / "killed"
    here = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, os.path.join(here, "workers.py"), str(store)],
                            env={**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")})
    deadline = time.time() + 120
    while time.time() < deadline:
        if store.exists() and len([f for f in os.listdir(store) if f.startswith("chunk-")]) >= 5:
            break
        if proc.poll() is not None:
            pytest.fail("worker ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len([f for f in os.listdir(store) if f.startswith("chunk-")])
    assert 5 <= done < 400
    torch.set_num_threads(1)
    obj = workers.digits_objective(n=1000)
    resumed = sharpness.local_flatness(obj, [0.0, 0.5, 1.0], n_directions=400, seed=3, strategy="loop",
                                       directions_per_chunk=1, store=str(store))
    whole = sharpness.local_flatness(obj, [0.0, 0.5, 1.0], n_directions=400, seed=3, strategy="loop",
                                     directions_per_chunk=100)
    torch.set_num_threads(2)
    np.testing.assert_array_equal(np.array(resumed.increases), np.array(whole.increases))
