"""No growth: measuring in one process many times keeps the live tensors and the resident memory flat (every
objective, graph, calibration entry and data copy of a measurement is released with it)."""
import gc

import pytest
import torch
from torch import nn


def _rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2 ** 20


def _live_tensors():
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.slow
def test_measuring_the_same_checkpoint_20_times_keeps_memory_flat(tmp_path):
    from flatlens import metrics as M
    from flatlens.checkpoint import load_checkpoint
    from flatlens.measure import measure
    from flatlens.train import TrainConfig, train
    train(TrainConfig(steps=10, eval_every=10, arch_kwargs={"width": 8}), str(tmp_path / "m.pt"), quiet=True)
    ck = load_checkpoint(tmp_path / "m.pt")
    s = M.Settings(common=M.Common(samples=128), metrics={
        "flatness": M.FlatnessSettings(n_directions=4), "qnoise": M.QnoiseSettings(n_samples=8, pred_rtol=0.5),
        "hessian-eig": M.EigSettings(tol=1e-2, max_hvp=60), "hessian-trace": M.TraceSettings(rtol=0.5)})
    marks = {}
    for i in range(1, 21):
        for metric in ("hessian-trace", "hessian-eig", "flatness", "qnoise"):
            measure(ck, metric, "train", s)
        gc.collect()
        if i in (5, 20):
            marks[i] = (_rss_mb(), _live_tensors())
    assert marks[20][0] - marks[5][0] < 50, marks
    assert marks[20][1] <= marks[5][1], marks


def test_building_20_objectives_returns_to_the_baseline():
    from flatlens import Objective
    from nets import image_data, tiny_cnn
    x, y = image_data(200, dtype=torch.float32)
    model = tiny_cnn(dtype=torch.float32)

    def build():
        obj = Objective(model, nn.CrossEntropyLoss(), (x, y), hvp_mode="auto")
        obj.hvp(torch.ones(obj.num_params))
        del obj
        gc.collect()

    for _ in range(3):
        build()
    base = (_rss_mb(), _live_tensors())
    for _ in range(20):
        build()
    assert _live_tensors() <= base[1] and _rss_mb() - base[0] < 20, (base, _rss_mb(), _live_tensors())
