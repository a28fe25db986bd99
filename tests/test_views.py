"""The views the loss-landscape and PyHessian users know: curves and slices along the Hessian's eigenvectors, a
training trajectory on its PCA plane (snapshots from `train --snapshot-every`), and HDF5 files in loss-landscape's
layout (surfaces, curves, directions exported and imported)."""
import json
import types

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from flatlens import FlatlensError, Objective, landscape, toys
from flatlens.landscape.h5 import read_directions, write_directions, write_landscape
from flatlens.landscape.results import SurfaceResult
from flatlens.perturb import DirectionSpace
from flatlens.train.snapshots import Snapshots, load_snapshots, save_snapshots


# --------------------------------------------------------------------------- eigen directions
def test_the_curve_along_a_unit_eigenvector_bends_by_its_eigenvalue_within_the_solvers_bound():
    rng = np.random.default_rng(0)
    lam = np.concatenate([[9.0, 6.0, 4.5], rng.uniform(-0.5, 3.0, 57)])
    obj = toys.quadratic(lam, seed=3)
    h = 1e-2
    res = landscape.random_curves(obj, [-h, 0.0, h], kind="eigen", n_directions=3, strategy="loop", eig_tol=1e-2)
    L = np.asarray(res.losses)
    second = (L[:, 0] - 2 * L[:, 1] + L[:, 2]) / h ** 2     # exact on a quadratic: v' A v, the Rayleigh quotient
    exact = np.sort(lam)[::-1][:3]
    bounds = np.asarray(res.direction["eigenvalue_bounds"])
    assert np.all(np.abs(second - exact) <= bounds + 1e-6 * exact), (second, exact, bounds)
    assert np.all(bounds > 1e-9)                             # a loose tolerance: the bound is doing the work
    np.testing.assert_allclose(second, res.direction["eigenvalues"], rtol=1e-6)  # recorded beside them
    assert res.direction["kind"] == "eigen" and res.direction["operator"] == "H"


def test_eigen_directions_are_unit_norm_orthogonal_and_skip_bias_bn_when_asked():
    from test_landscape import bnnet_objective
    _, obj = bnnet_objective(torch.float64)
    space = DirectionSpace(obj, "eigen", "biasbn", n=2, eig_tol=1e-4)
    dx, dy = space.orthogonal_pair(0)
    assert float(dx.norm()) == pytest.approx(1.0) and float(dy.norm()) == pytest.approx(1.0)
    assert abs(float(dx @ dy)) < 1e-6
    for name, d in obj.unflatten(dx).items():
        if d.dim() <= 1:
            assert torch.all(d == 0), name          # the eigenvectors of P H P live on the weights
    surf = landscape.random_surface(obj, [-0.1, 0, 0.1], [-0.1, 0, 0.1], kind="eigen", ignore="biasbn",
                                    strategy="loop", eig_tol=1e-4)
    assert len(surf.direction["eigenvalues"]) == 2 and surf.direction["operator"].startswith("P H P")


# --------------------------------------------------------------------------- trajectories
def _mlp_objective(dtype=torch.float32):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=g, dtype=dtype), torch.randint(0, 3, (64,), generator=g)
    return Objective(m, nn.CrossEntropyLoss(), (x, y))


def _snapshots_in_a_plane(obj, xs, ys, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(obj.num_params, 2, generator=g, dtype=torch.float64))
    u, v = Q[:, 0], Q[:, 1]
    c = obj.flatten(obj.center).double()
    W = torch.stack([c + x * u + y * v for x, y in zip(xs, ys)])
    base = W[0].float()
    snaps = Snapshots(list(obj.names), [tuple(s) for s in obj.shapes], base, 0, list(range(0, 10 * len(xs), 10)),
                      (W.float() - base).to(dtype), 10)
    return snaps, u, v


def test_a_trajectory_in_a_known_plane_is_recovered_exactly():
    obj = _mlp_objective()
    t = np.linspace(0, 1, 9)
    xs, ys = -2.0 * (1 - t) ** 1.5, 0.8 * np.sin(3 * t) * (1 - t)    # a curved path ending at the centre
    snaps, u, v = _snapshots_in_a_plane(obj, xs, ys)
    pca = landscape.pca_directions(obj, snaps)
    assert sum(pca["ratio"][:2]) == pytest.approx(1.0, abs=1e-9)       # all variance in two directions
    D = torch.stack([pca["d1"], pca["d2"]]).double()
    P = torch.stack([u, v])
    assert torch.linalg.svdvals(D @ P.T).min() > 1 - 1e-6                # the same plane
    pts = np.c_[pca["x"], pca["y"]][:-1]                                  # the centre comes last, at (0, 0)
    true = np.c_[xs, ys]
    dist = lambda Z: np.linalg.norm(Z[:, None] - Z[None], axis=2)       # noqa: E731
    np.testing.assert_allclose(dist(pts), dist(true), atol=2e-6)          # the path, up to a rotation
    assert pca["x"][-1] == 0.0 and pca["y"][-1] == 0.0 and pca["x"][0] < 0 and pca["y"][0] < 0
    res = landscape.trajectory(obj, snaps, points=7, strategy="loop")
    assert min(res.xs) <= min(pca["x"]) and max(res.ys) >= max(pca["y"]) and res.path_steps[-1] is None
    j, i = res.ys.index(0.0), res.xs.index(0.0)
    assert res.losses[j][i] == pytest.approx(obj.loss(), rel=1e-6)


def test_snapshots_round_trip_and_a_run_writes_them(tmp_path):
    obj = _mlp_objective()
    for dtype, tol in ((torch.float32, 0.0), (torch.float16, 2.0 ** -11)):
        snaps, _, _ = _snapshots_in_a_plane(obj, [-1, -0.5, 0.0], [0.2, -0.1, 0.0])
        exact = snaps.deltas.clone()
        snaps.deltas = exact.to(dtype)
        save_snapshots(str(tmp_path / "s"), snaps)
        back = load_snapshots(str(tmp_path / "s"))
        assert back.names == snaps.names and back.steps == snaps.steps and back.dtype == str(dtype)[6:]
        assert torch.equal(back.deltas, snaps.deltas) and torch.equal(back.base, snaps.base)
        err = (back.deltas.float() - exact).abs()
        assert torch.all(err <= tol * exact.abs() + 1e-7)                 # float16: about 3 significant digits
    from flatlens.cli import main
    from flatlens.checkpoint import load_checkpoint
    out = tmp_path / "m.pt"
    assert main(["train", "--steps", "10", "--eval-every", "5", "--width", "2", "--select", "last",
                 "--snapshot-every", "4", "--snapshot-dtype", "float32", "--out", str(out), "--quiet"]) == 0
    back, ck = load_snapshots(str(out)), load_checkpoint(str(out))   # the checkpoint's path finds its snapshots
    assert back.steps == [0, 4, 8, 10] and back.checkpoint_sha256 == ck.sha256
    last = torch.cat([ck.state_dict[n].reshape(-1).float() for n in back.names])
    assert torch.allclose(back.weights()[-1], last, atol=1e-6)       # the last step is the checkpoint's weights
    (tmp_path / "bad").write_bytes(b"PK" + b"\0" * 40)
    with pytest.raises(FlatlensError):
        load_snapshots(str(tmp_path / "bad"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from flatlens.cli import main
    d = tmp_path_factory.mktemp("views")
    for name, extra in (("a", []), ("b", ["--seed", "1"])):
        assert main(["train", "--steps", "24", "--eval-every", "12", "--width", "4", "--select", "last",
                     "--snapshot-every", "6", "--out", str(d / f"{name}.pt"), "--quiet", *extra]) == 0
    return d


def test_landscape_trajectory_draws_the_path_on_its_pca_plane_and_writes_loss_landscape_files(run, capsys):
    from flatlens.cli import main
    from flatlens.landscape.results import TrajectoryResult
    from flatlens.pipeline import MeasurementRun
    a = str(run / "a.pt")
    assert main(["landscape", a, "--trajectory", a + ".snapshots", "--points", "7", "--samples", "64",
                 "--json", str(run / "t.json"), "--h5", str(run / "t.h5"), "--plot", str(run / "t.png")]) == 0
    assert "explained variance of the 1st PCA direction" in capsys.readouterr().out
    rec = MeasurementRun.from_json(run / "t.json").records[0]
    r = rec.result
    assert isinstance(r, TrajectoryResult) and len(r.path_x) == len(r.path_steps) == 6   # 5 snapshots + centre
    assert rec.row("pc1").value == pytest.approx(r.explained_variance_ratio[0]) and 0 < rec.row("pc2").value < 1
    assert len(rec.settings["surface"]["trajectory_sha256"]) == 64
    with h5py.File(run / "t.h5", "r") as f:  # loss-landscape's keys: plot_2D.py --surf_file --dir_file --proj_file
        assert f["train_loss"].shape == (7, 7)
        np.testing.assert_allclose(f["xcoordinates"][:], r.xs)
        np.testing.assert_allclose(f["ycoordinates"][:], r.ys)
        np.testing.assert_allclose(f["train_loss"][:], np.asarray(r.losses))      # square: Z[j, i] at (x_i, y_j)
        np.testing.assert_allclose(f["proj_xcoord"][:], r.path_x)
        np.testing.assert_allclose(f["explained_variance_ratio_"][:], r.explained_variance_ratio)
        assert "train_acc" in f and "dir_file" in f
    # another run's snapshots around this checkpoint: refused in one line
    assert main(["landscape", a, "--trajectory", str(run / "b.pt.snapshots"), "--samples", "64"]) == 2
    assert "not by" in capsys.readouterr().err


def test_surfaces_keep_loss_landscapes_raveled_order_on_any_grid(tmp_path):
    xs, ys = [-1.0, 0.0, 1.0, 2.0], [-0.5, 0.5]
    Z = [[10 * j + i for i in range(4)] for j in range(2)]          # Z[j][i]: the point (x_i, y_j)
    res = SurfaceResult(xs=xs, ys=ys, losses=Z, accuracies=None, center_loss=0.0, evaluator={}, seconds=0.0,
                        direction={})
    rec = types.SimpleNamespace(result=res, split="train", metric="surface", checkpoint="c.pt", checkpoint_sha256="0",
                                weights_label="w", data={"n": 1}, seed=0)
    write_landscape(str(tmp_path / "s.h5"), [rec])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        stored = f["train_loss"][:]
        assert stored.shape == (4, 2)                                 # (len(x), len(y)), as loss-landscape makes it
        X, Y = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:])   # its scheduler's enumeration of the points
        for k in range(8):
            assert stored.ravel()[k] == Z[[-0.5, 0.5].index(Y.ravel()[k])][xs.index(X.ravel()[k])]


def test_exported_directions_reimported_give_identical_curves_on_every_model(run, capsys):
    from flatlens.cli import main
    from flatlens.pipeline import MeasurementRun
    a, b = str(run / "a.pt"), str(run / "b.pt")
    common = ["--directions", "3", "--points", "5", "--range", "-0.5", "0.5", "--samples", "64", "--seed", "4",
              "--quiet"]
    assert main(["landscape", a, *common, "--kind", "filter", "--save-directions", str(run / "d.h5"),
                 "--json", str(run / "c1.json")]) == 0
    assert main(["landscape", a, *common, "--directions-file", str(run / "d.h5"), "--json", str(run / "c2.json"),
                 "--h5", str(run / "c2.h5")]) == 0
    first, again = (MeasurementRun.from_json(run / f).records[0].result for f in ("c1.json", "c2.json"))
    np.testing.assert_array_equal(first.losses, again.losses)
    assert again.direction["kind"] == "file" and len(again.direction["sha256"]) == 64
    assert again.direction["written_as"]["kind"] == "filter" and again.direction["written_as"]["seed"] == 4
    with h5py.File(run / "c2.h5", "r") as f:
        np.testing.assert_allclose(f["train_loss"][:], first.mean)
        assert f["train_loss_directions"].shape == (3, 5)
    with h5py.File(run / "d.h5", "r") as f:  # loss-landscape's direction groups, one dataset per parameter tensor
        from flatlens.models import build
        n_params = len(list(build("small_cnn", width=4, num_classes=10, in_channels=1).parameters()))
        assert {"xdirection", "ydirection", "direction2"} <= set(f) and len(f["xdirection"]) == n_params
    # the same directions on another model of the architecture, their hash recorded
    assert main(["landscape", b, *common, "--directions-file", str(run / "d.h5"), "--json", str(run / "c3.json")]) == 0
    other = MeasurementRun.from_json(run / "c3.json").records[0].result
    assert other.direction["sha256"] == again.direction["sha256"] and other.losses != first.losses
    # asking for more directions than the file holds is refused in one line that names the fix
    more = [x if x != "3" else "4" for x in common]
    assert main(["landscape", a, *more, "--directions-file", str(run / "d.h5")]) == 2
    assert "holds 3 directions; 4 asked (--directions 3 reads them all)" in capsys.readouterr().err


def test_loss_landscapes_own_direction_files_are_read_by_position_and_checked():
    obj = _mlp_objective(torch.float64)
    rows = DirectionSpace(obj, "filter", "none").make(0, range(2)).numpy()
    import tempfile
    path = tempfile.mktemp(suffix=".h5")
    with h5py.File(path, "w") as f:  # as its net_plotter writes them: no names, datasets "0", "1", ...
        for g, row in zip(("xdirection", "ydirection"), rows):
            grp = f.create_group(g)
            start = 0
            for i, s in enumerate(obj.shapes):
                grp.create_dataset(str(i), data=row[start:start + s.numel()].reshape(tuple(s)))
                start += s.numel()
    back, meta = read_directions(path, obj.names, obj.shapes)
    np.testing.assert_array_equal(back, rows)
    assert meta["count"] == 2 and len(meta["sha256"]) == 64
    write_directions(path, rows, obj.names, obj.shapes, {"kind": "filter"})
    with pytest.raises(FlatlensError, match="other parameters"):
        read_directions(path, obj.names[:-1] + ["zzz"], obj.shapes)
    with pytest.raises(FlatlensError, match="shape"):
        read_directions(path, obj.names, [(1, 1)] * len(obj.names))
    assert json.loads(h5py.File(path, "r").attrs["flatlens"])["kind"] == "filter"
