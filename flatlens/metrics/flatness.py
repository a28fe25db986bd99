"""Local flatness (SWAD's measure, the paper's only flatness figure), and the evaluation settings every
perturbation metric shares."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..perturb.evaluator import PRECISIONS, STRATEGIES
from .registry import LOWER, Metric, Row, RowSpec, register_metric, setting, t_row


@dataclass
class EvalSettings:
    """How perturbed models are evaluated (every perturbation metric)."""
    strategy: str = setting("auto", "how perturbed models are evaluated", "--strategy", choices=STRATEGIES)
    precision: str = setting("fp32", "evaluation precision", "--precision", choices=PRECISIONS)


@dataclass
class FlatnessSettings(EvalSettings):
    radii: tuple = setting((0.0, 0.5, 1.0, 2.0, 3.0, 4.0), "radii (L2 norm of the perturbation, up to 1e4: past it "
                           "every loss of these models overflows)", "--radii", nargs="+", min=0, max=1e4)
    n_directions: int = setting(50, "random unit directions (flatness) / directions (curves)", "--directions",
                                min=2)
    kind: str = setting("sphere", "direction kind (SWAD: uniform on the unit sphere)")


def _flatness_compute(obj, s: FlatnessSettings, ctx):
    from .. import sharpness
    return sharpness.local_flatness(obj, list(s.radii), n_directions=s.n_directions, seed=ctx.seed, kind=s.kind,
                                    strategy=s.strategy, precision=s.precision, store=ctx.store,
                                    progress=ctx.progress)


def _flatness_rows(r, s) -> list[Row]:
    inc = np.asarray(r.increases)
    pairing = f"{r.direction.get('kind')}:{r.n_directions}:{r.seed}:{r.objective.get('num_params')}"
    return [t_row(f"r={rad:g}", inc[:, j], pairing=pairing) for j, rad in enumerate(r.radii) if rad > 0]


register_metric(Metric(
    name="flatness", summary="SWAD-style local flatness E_u[F(w + r u)] - F(w) per radius",
    command="flatness", role="headline", settings=FlatnessSettings, compute=_flatness_compute,
    rows=_flatness_rows, specs=(RowSpec("r=", "local flatness r={rest}", "nats", LOWER, prefix=True),),
    brief=lambda r: f"{r.n_directions} directions, strategy {r.evaluator.get('strategy')}",
    cost="about 2 s (50 directions x 6 radii)", summary_row=lambda s: f"r={max(s.radii):g}",
    claim="{b} models are flatter than {a} by local flatness",
    plans={"full": lambda: FlatnessSettings(radii=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0), n_directions=20),
           "quick": lambda: FlatnessSettings(radii=(0.0, 1.0, 2.0, 4.0), n_directions=10)},
    figures=("fig1_local_flatness", "fig2_per_seed_pairs")))
