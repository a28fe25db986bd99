"""`--plot` of the landscape commands: one figure of the view just measured (an interpolation, curves along random or
eigen directions, a slice, a trajectory on its PCA plane), one panel per split, from the typed records."""
from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .._util import FlatlensError, atomic_write_bytes  # noqa: E402
from ..landscape.results import (CurvesResult, InterpolationResult, SurfaceResult,  # noqa: E402
                                 TrajectoryResult)
from .figures import FORMATS, _style  # noqa: E402


def _interpolation(ax, r: InterpolationResult, split: str) -> None:
    a = np.asarray(r.alphas)
    ax.plot(a, r.losses, "o-", ms=3, color="tab:blue", label="L(a)")
    ax.plot(a, (1 - a) * r.endpoint_losses[0] + a * r.endpoint_losses[1], "--", color="0.5", lw=1,
            label="line between the endpoints")
    peak = r.alphas.index(r.barrier_alpha)
    top = r.losses[peak]
    if r.barrier_ci95 is not None:
        base = top - r.barrier
        ax.errorbar([r.barrier_alpha], [top], yerr=[[r.barrier - r.barrier_ci95[0]], [r.barrier_ci95[1] - r.barrier]],
                    fmt="D", color="k", capsize=4, ms=5, label=f"barrier {r.barrier:.3g} (simultaneous 95 % CI)")
        ax.plot([r.barrier_alpha, r.barrier_alpha], [base, top], color="k", lw=0.8)
    ax.axvspan(0, 1, color="0.9", zorder=0)
    ax.set_xlabel("a in (1 - a) w_A + a w_B")
    ax.set_ylabel(f"{split} loss (nats)")
    if r.accuracies is not None:
        ax2 = ax.twinx()
        ax2.plot(a, 100 * np.asarray(r.accuracies), color="tab:red", lw=1, alpha=0.7)
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.grid(False)
    ax.set_title(f"{split}: BatchNorm {r.bn['policy'].split(' ')[0]}; {r.quantization.split(':')[0]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def _curves(ax, r: CurvesResult, split: str) -> None:
    eig = r.direction.get("eigenvalues")
    for i, row in enumerate(r.losses):
        label = f"v{i + 1}: λ = {eig[i]:.4g}" if eig else (f"direction {i + 1}" if i < 8 else None)
        ax.plot(r.alphas, row, lw=1, label=label)
    ax.set_xlabel("step a along the direction" + (" (unit eigenvector: distance in weight space)" if eig else ""))
    ax.set_ylabel(f"{split} loss L(w + a d) (nats)")
    ax.set_title(f"{split}: {r.n_directions} {r.direction.get('kind')} directions", fontsize=9)
    ax.legend(fontsize=7)


def _surface(fig, ax, r: SurfaceResult, split: str) -> None:
    Z = np.log10(np.maximum(np.asarray(r.losses), 1e-12))
    X, Y = np.meshgrid(r.xs, r.ys)
    cs = ax.contourf(X, Y, Z, levels=15, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=f"log10 {split} loss")
    ax.plot([0], [0], "r+", ms=9)
    if isinstance(r, TrajectoryResult):
        ax.plot(r.path_x, r.path_y, "w.-", ms=5, lw=1, label="training path (projected)")
        ax.plot(r.path_x[:1], r.path_y[:1], "ws", ms=6)
        ev = r.explained_variance_ratio
        ax.set_xlabel(f"1st PCA direction: {100 * ev[0]:.1f} % of the variance")
        ax.set_ylabel(f"2nd PCA direction: {100 * ev[1]:.1f} %")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{split}: the run's {r.direction.get('snapshots')} snapshots on their PCA plane", fontsize=9)
    else:
        eig = r.direction.get("eigenvalues")
        ax.set_xlabel("a (dx)" + (f": v1, λ = {eig[0]:.4g}" if eig else ""))
        ax.set_ylabel("b (dy)" + (f": v2, λ = {eig[1]:.4g}" if eig else ""))
        ax.set_title(f"{split}: {r.direction.get('kind')} directions", fontsize=9)


def plot_view(records, path: str) -> None:
    """One panel per record (split) of a landscape or interpolate command, written atomically to `path`."""
    ext = os.path.splitext(path)[1][1:].lower() or "png"
    if ext not in FORMATS:
        raise FlatlensError(f"--plot {path}: unknown format {ext!r}; use one of {', '.join(FORMATS)}")
    if not records:
        raise FlatlensError("nothing to draw")
    _style()
    fig, axes = plt.subplots(1, len(records), figsize=(5.6 * len(records), 4.3), squeeze=False)
    for ax, rec in zip(axes[0], records):
        r = rec.result
        if isinstance(r, InterpolationResult):
            _interpolation(ax, r, rec.split)
        elif isinstance(r, CurvesResult):
            _curves(ax, r, rec.split)
        elif isinstance(r, SurfaceResult):
            _surface(fig, ax, r, rec.split)
        else:
            raise FlatlensError(f"no view of a {type(r).__name__}")
    fig.suptitle(f"{os.path.basename(records[0].checkpoint or '')}: {records[0].weights_label}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=ext, dpi=130, metadata={"CreationDate": None} if ext == "pdf" else None)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
