"""The code's shape, pinned: a metric is one registry entry that every consumer sees; the CLI is one table of
commands; training flags override a config file without reading sys.argv; only the objective and its Hessian
operator read the objective's internals."""
import ast
import dataclasses
import json
import os

import matplotlib
import pytest
import torch

from flatlens import metrics as M
from flatlens.cli import COMMANDS, build_parser, main

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flatlens")


# --------------------------------------------------------------------------- a toy metric, everywhere at once
@dataclasses.dataclass
class ToySettings:
    scale: float = M.setting(2.0, "a multiplier of the centre loss", "--toy-scale", gt=0)


def _toy_compute(obj, s, ctx):
    from flatlens.hessian.results import TraceResult
    v = s.scale * obj.loss()
    return TraceResult(value=v, stderr=0.1 * v, ci95=(0.8 * v, 1.2 * v), n_hvp=0, n_probes=5, converged=True,
                       seconds=0.0, seed=ctx.seed, method="toy", rtol=0.1, objective=obj.describe())


TOY = M.Metric(
    name="toy-loss", summary="a toy: the centre loss times a scale", command="sharpness", role="headline",
    settings=ToySettings, compute=_toy_compute,
    rows=lambda r, s: [M.Row("scaled", r.value, r.stderr, 4, tuple(r.ci95), "ci95", 5)],
    specs=(M.RowSpec("scaled", "toy scaled loss", "nats"),), brief=lambda r: "toy", cost="nothing",
    summary_row=lambda s: "scaled", plans={"quick": lambda: ToySettings(scale=3.0)},
    figures=("fig2_per_seed_pairs",))


@pytest.mark.slow
def test_a_toy_metric_is_one_entry_that_every_consumer_sees(tmp_path, capsys):
    from flatlens.checkpoint import load_checkpoint
    from flatlens.compare import Comparison
    from flatlens.pipeline import Target, measure_all
    from flatlens.plots import FIGURES
    from flatlens.report import write_report
    from flatlens.reproduce import Plan, metrics_for, plan_settings, run
    with M.swapped({**{n: m for n, m in M.REGISTRY.items() if n in ("hessian-trace", "flatness")},
                    "toy-loss": TOY}):
        # the CLI: a choice of compare and of its command, with its flag
        sharpness_help = build_parser()._subparsers._group_actions[0].choices["sharpness"].format_help()
        assert "toy-loss" in sharpness_help and "--toy-scale" in sharpness_help
        # the plan: its quick settings, on every seed (role headline)
        plan = Plan(domains=("75",), dataset="rotated-digits", image_size=None, seeds=(0, 1),
                    configs=(("fp32", None), ("q7", 7)), steps=40, quant_start=16,
                    eval_every=20, width=4, settings=plan_settings("quick", 64))
        assert plan.settings.of("toy-loss").scale == 3.0 and "toy-loss" in metrics_for(plan, 1)
        res = run(str(tmp_path / "run"), plan=plan, jobs=1, quiet=True)
        # measure_all and the run's records
        ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "test75" / "fp32_s0.pt")
        done = measure_all([Target(ck, ["toy-loss"], plan.settings)], ["train"])
        rec = done.get(0, "train", "toy-loss")
        assert rec.row("scaled").value == pytest.approx(3.0 * rec.center_loss)
        assert res.models[0].record("train", "toy-loss").row("scaled").value == pytest.approx(rec.row("scaled").value)
        # compare
        j = tmp_path / "cmp.json"
        assert main(["compare", str(ck.path), str(tmp_path / "run" / "checkpoints" / "test75" / "q7_s0.pt"),
                     "--metric", "toy-loss", "--toy-scale", "5", "--samples", "32", "--no-cache", "--quiet",
                     "--json", str(j)]) == 0
        rows = Comparison.from_json(j).rows
        assert {r.metric for r in rows} == {"toy-loss"} and rows[0].label == "toy scaled loss"
        # the report (summary column, headline tables) and a figure
        text = write_report(res)
        assert "toy scaled loss" in text
        fig = FIGURES["fig2_per_seed_pairs"](res)
        labels = [ax.get_ylabel() for ax in fig.axes]
        assert any("toy scaled loss" in lab for lab in labels)
        matplotlib.pyplot.close(fig)
    assert "toy-loss" not in M.REGISTRY  # restored


# --------------------------------------------------------------------------- the CLI as one table
def test_every_subcommand_is_one_table_entry_whose_paths_preflight_reads():
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices
    assert set(subs) == {c.name for c in COMMANDS if not c.measures or M.names(c.name)}
    assert {c.name for c in COMMANDS if c.measures} == set(M.COMMANDS)  # one list of the measuring commands
    for c in COMMANDS:
        dests = {a.dest for a in subs[c.name]._actions}
        for name in c.inputs + c.files + c.folders:
            assert isinstance(name, tuple) or name in dests, (c.name, name)


def test_compare_measures_the_registry_default_when_no_metric_is_given(tmp_path):
    parse = lambda: build_parser().parse_args(["compare", "a.pt", "b.pt"]).metric  # noqa: E731
    assert parse() == "hessian-trace" == M.default_metric()
    # that entry removed, plain `compare A B` still measures a registered metric (no name hard-coded in the CLI)
    with M.swapped({n: m for n, m in M.REGISTRY.items() if n != "hessian-trace"}):
        assert parse() in M.REGISTRY
    from flatlens.compare import Comparison
    from flatlens.train import TrainConfig, train
    paths = [str(tmp_path / f"s{s}.pt") for s in (0, 1)]
    for s, p in enumerate(paths):
        train(TrainConfig(steps=4, eval_every=4, arch_kwargs={"width": 2}, seed=s), p, quiet=True)
    j = tmp_path / "cmp.json"
    with M.swapped({n: m for n, m in M.REGISTRY.items() if n == "flatness"}):
        assert parse() == "flatness"
        assert main(["compare", *paths, "--samples", "32", "--directions", "4", "--no-cache", "--quiet",
                     "--json", str(j)]) == 0
    assert {r.metric for r in Comparison.from_json(j).rows} == {"flatness"}


def test_train_flags_override_a_config_file_from_python(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": {"steps": 50, "eval_every": 7, "arch_kwargs": {"width": 2}, "seed": 3}}))
    out = tmp_path / "m.pt"
    assert main(["train", "--config", str(cfg), "--steps", "7", "--out", str(out), "--quiet"]) == 0
    from flatlens.checkpoint import load_checkpoint
    ck = load_checkpoint(out)
    assert ck.train["steps"] == 7 and ck.train["seed"] == 3  # the flag won; the file's seed stayed
    assert [h["step"] for h in ck.history if "step" in h and "event" not in h] == [7]
    assert main(["train", "--config", str(cfg), "--steps", "7", "--seed", "5", "--out", str(out), "--quiet"]) == 0
    assert torch.load(out, weights_only=True)["train"]["seed"] == 5


# --------------------------------------------------------------------------- who reads the objective's internals
OWNERS = {os.path.join(ROOT, "objective.py"), os.path.join(ROOT, "hessian", "operator.py")}
NAMES = {"obj", "objective", "o", "sub", "real"}


def _private_reads(path):
    tree = ast.parse(open(path).read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            v = node.value
            base = v.id if isinstance(v, ast.Name) else (v.attr if isinstance(v, ast.Attribute) and
                                                          isinstance(v.value, ast.Name) and v.value.id == "self"
                                                          else None)
            if base in NAMES:
                out.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {base}.{node.attr}")
    return out


def test_only_the_objective_and_its_hessian_operator_read_its_internals():
    found = []
    for folder, _, files in os.walk(ROOT):
        for f in files:
            path = os.path.join(folder, f)
            if f.endswith(".py") and path not in OWNERS:
                found += _private_reads(path)
    assert not found, found


# --------------------------------------------------------------------------- no import cycle
def _modules() -> dict[str, str]:
    """Every module of the package by dotted name ("flatlens.metrics" for its __init__.py) -> its path."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, read with ast from every import statement anywhere in the file
    (module level, inside functions, under TYPE_CHECKING). `from X import name` reaches X.name where that is a
    module, else X; a package's own __init__ that Python runs first is not counted as an import of it."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def _a_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["flatlens.metrics.interpolate"] and "flatlens.measure" in graph  # it read the package
    cycle = _a_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    # the checker sees a cycle where there is one (a function-level import closing a loop)
    assert _a_cycle({**graph, "flatlens.data": graph["flatlens.data"] | {"flatlens.pipeline"}})
