"""The `flatlens` command line. Bad input: one line on stderr and exit code 2, never a traceback.

Every subcommand is one entry of `COMMANDS`: its flags, the paths it reads and writes (checked by `_preflight`
before any work) and its handler. The measuring commands (`hessian`, `landscape`, `flatness`, `sharpness`,
`compare`) take their metric choices and every metric setting's flag from the metric registry
(`flatlens.metrics.REGISTRY`: each entry names the command that measures it) and measure through
`pipeline.measure_all`, so one metric is one computation whichever command asks for it."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable

from ._version import __version__
from . import fmt
from . import metrics as M
from ._util import FlatlensError, atomic_write_text
from .metrics import Common, Settings


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"flatlens: error: {message} (see --help)\n")


def _out(args, text):
    if not getattr(args, "quiet", False):
        print(text)


def _write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def _load(args, path) -> dict:
    """A flatlens checkpoint, or a foreign one (DomainBed / QT-DoG / SWAD, torchvision, --model) converted by
    the import layer with the command's import options."""
    from .importers import load_any
    return load_any(path, _import_opts_from(args), args.format or "auto")


def _device(args) -> str:
    """--device checked before any work: exists and is available here (one line naming those that are)."""
    from ._util import resolve_device
    return str(resolve_device(getattr(args, "device", None) or "cpu"))


def _splits(split):
    return ["train", "test"] if split == "both" else [split]


# ----------------------------------------------------------------------------- training
TRAIN_FLAGS = ("dataset", "data_root", "image_size", "arch", "pretrained", "freeze_bn", "quant_start", "steps",
               "lr", "weight_decay", "batch_size", "eval_every", "seed", "split_seed", "device", "select")


def train_config(args):
    """The training settings: the data set's defaults (or --config's file), then every flag given (flags
    default to None: a flag absent leaves the file's or the default's value)."""
    from .data import DEFAULT, dataset_spec
    from .train import TrainConfig
    if args.config:
        cfg = _config_from_file(args.config)
    elif dataset_spec(args.dataset or DEFAULT).train_defaults == "domainbed":  # the paper's DomainBed defaults
        cfg = TrainConfig.paper_domainbed()
    else:  # embedded sets: the small-CNN defaults
        cfg = TrainConfig()
    for name in TRAIN_FLAGS:
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.test_domain:
        cfg.test_domains = args.test_domain
    if args.bits is not None:  # --bits 32: full precision, also over a config file's bits
        cfg.bits = None if args.bits == 32 else args.bits
    if args.per_tensor:
        cfg.per_channel = False
    if args.width is not None:
        cfg.arch_kwargs = {"width": args.width}
    if cfg.bits is None and args.quant_start is not None and not getattr(args, "prefix", None):
        # a full-precision run reads quant_start only as the end of the shared prefix it branches from
        raise FlatlensError("--quant-start needs --bits, or --prefix (where a full-precision run's shared prefix ends)")
    return cfg


def cmd_train(args):
    from .train import train, train_prefix
    cfg = train_config(args)
    if args.prefix:  # the full-precision prefix this seed's runs share: trained once, then branched from
        train_prefix(cfg, args.prefix, quiet=not args.progress)
    ckpt = train(cfg, args.out, resume=args.resume, quiet=not args.progress, prefix=args.prefix,
                 snapshot_every=args.snapshot_every, snapshot_dtype=args.snapshot_dtype)
    m = ckpt.metrics
    if args.snapshot_every:
        from .train import load_snapshots, snapshot_path
        sn = load_snapshots(snapshot_path(args.out))
        _out(args, f"wrote {snapshot_path(args.out)}: {len(sn.steps)} snapshots (steps {sn.steps[0]} to {sn.steps[-1]}, "
                   f"every {sn.every}) as flat {sn.dtype} deltas from the weights at step {sn.base_step}")
    rule = "the last step (--select last)" if ckpt.train.get("select") == "last" else "in-domain validation"
    _out(args, f"wrote {args.out}: step {m['selected_step']} selected by {rule}; "
               f"val {100 * m['mean_val_acc']:.2f} %, test {100 * m['mean_test_acc']:.2f} % "
               f"({', '.join(f'{d}: {100 * a:.2f} %' for d, a in m['test_acc'].items())}); "
               f"{m['train_seconds']:.1f} s; size {m['size_ratio']:.3f} x fp32")


def _config_from_file(path):
    from .data import DEFAULT, dataset_spec
    from .train import TrainConfig
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise FlatlensError(f"{path}: no such config file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FlatlensError(f"{path}: not valid JSON ({str(e)[:80]})") from None
    except OSError as e:
        raise FlatlensError(f"{path}: cannot read the config ({e.strerror or e})") from None
    if not isinstance(raw, dict):
        raise FlatlensError(f"{path}: a config is a JSON object of training settings; got a {type(raw).__name__}")
    train_cfg = raw.get("train", raw)
    if not isinstance(train_cfg, dict):
        raise FlatlensError(f"{path}: \"train\" is a {type(train_cfg).__name__}, not an object of settings")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(train_cfg) - names
    if unknown:
        raise FlatlensError(f"{path}: unknown training setting(s) {', '.join(sorted(unknown))}")
    for k, v in train_cfg.items():  # each of its type ({"freeze_bn": "true"} once trained, then evaluate refused it)
        err = TrainConfig.type_error(k, v)
        if err:
            raise FlatlensError(f"{path}: {err}")
    domainbed = dataset_spec(train_cfg.get("dataset", DEFAULT)).train_defaults == "domainbed"
    base = TrainConfig.paper_domainbed() if domainbed else TrainConfig()
    for k, v in train_cfg.items():
        setattr(base, k, v)
    return base


def cmd_evaluate(args):
    """Evaluates the checkpoint's model now (every domain's accuracy), beside what training recorded."""
    from .train import ensemble_accuracy
    ck = _load(args, args.checkpoint)
    device = _device(args)
    m = ck.metrics or {}
    q = ck.quant
    now = ensemble_accuracy([ck], split="both", device=device)
    src = f", imported from {ck.provenance['source_format']}" if ck.provenance else ""
    qat = (f"{q.bits}-bit QAT" + (f" from step {q.start_step}" if q.start_step is not None else "")
           if q else "full precision")
    lines = [f"{args.checkpoint}: {ck.arch.name}{src}, {qat}"
             + (f", {ck.data.dataset}, test domain(s) {', '.join(ck.data.test_domains)}" if ck.data else "")
             + (f", selected step {m['selected_step']}" if m else "")
             + "; accuracy measured now" + (" (recorded at training)" if m else "")]
    for key, acc in now["ensemble"].items():
        kind, d = key.split(":", 1)
        rec = m.get("val_acc" if kind == "val" else "test_acc", {}).get(d)
        label = "in-domain validation" if kind == "val" else "out-of-domain test"
        lines.append(f"  {label:21} {d:>14}: {100 * acc:6.2f} %" + (f"  ({100 * rec:.2f} %)" if rec is not None
                                                                     else ""))
    lines.append(f"  size: {now['packed_bytes']} bytes packed vs {now['fp32_bytes_one_model']} fp32 "
                 f"({now['packed_bytes'] / now['fp32_bytes_one_model']:.3f} x)")
    _out(args, "\n".join(lines))
    if args.json:
        _write_json(args.json, {"checkpoint": args.checkpoint, "sha256": ck.sha256,
                                "accuracy_now": now["ensemble"], "recorded": m or None,
                                "provenance": ck.provenance})


def cmd_ensemble(args):
    from .train import ensemble_accuracy
    cks = [_load(args, p) for p in args.checkpoints]
    res = ensemble_accuracy(cks, split=args.split, device=args.device)
    lines = [f"EoQ ensemble of {len(cks)} models ({args.split} split):"]
    for k, v in res["ensemble"].items():
        mem = [mm[k] for mm in res["members"]]
        lines.append(f"  {k:>18}: ensemble {100 * v:6.2f} %   members {', '.join(f'{100 * a:.2f}' for a in mem)} %")
    lines.append(f"  total packed size {res['packed_bytes']} bytes ({res['packed_bytes'] / res['fp32_bytes_one_model']:.3f}"
                 " x one fp32 model)")
    _out(args, "\n".join(lines))
    if args.json:
        _write_json(args.json, res)



# ----------------------------------------------------------------------------- measuring commands
def _settings(args, metric_names) -> Settings:
    """Common settings and each metric's own from the parsed flags (flags not given keep the defaults)."""
    common = Common()
    for f in dataclasses.fields(Common):
        flag = f.metadata.get("flag")
        if flag and getattr(args, _dest(flag), None) is not None:
            setattr(common, f.name, getattr(args, _dest(flag)))
    per = {}
    # every flag given is checked: by the asked metrics that use it, or, when none does, by the others
    asked_flags = {f.metadata.get("flag") for n in metric_names for f in dataclasses.fields(M.get(n).settings)}
    for name in M.REGISTRY:
        s = M.get(name).settings()
        given = False
        for f in dataclasses.fields(s):
            flag = f.metadata.get("flag")
            if name not in metric_names and flag in asked_flags:
                continue  # an asked metric uses this flag and checks it against its own range
            if flag and getattr(args, _dest(flag), None) is not None:
                v = getattr(args, _dest(flag))
                setattr(s, f.name, tuple(v) if isinstance(v, list) else v)
                given = True
        if name in metric_names:
            per[name] = s
        elif given:
            M.check_settings(s, f"{name}: ")
    out = Settings(common=common, metrics=per)
    out.check()
    return out


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _record_lines(rec) -> list[str]:
    m = M.get(rec.metric)
    lines = [f"  {m.name}: {m.brief(rec.result)}"]
    for r in rec.rows:
        iv = ""
        if r.interval is not None:
            iv = (f"  [{fmt.num(r.interval[0], 6, sci=4, missing='-')}, "
                  f"{fmt.num(r.interval[1], 6, sci=4, missing='-')}] ({M.interval_label(r.interval_kind)})")
        n = f"  n = {r.n}" if r.n else ""
        lines.append(f"    {m.label(r.key):48} {fmt.num(r.value, 6, sci=4, missing='-')}{iv}{n}")
    return lines


def _measure_command(args, metric_names: list[str], extra_lines=None):
    """Measure each metric on each split (`pipeline.measure_all`); print the rows; write the typed records.
    Under torchrun the ranks share the work along `--axis`; rank 0 prints and writes."""
    from .checkpoint import weights_label
    from .parallel import group_info
    from .perturb import init_distributed
    from .pipeline import DataSource, MeasurementRun, Target, measure_all
    settings = _settings(args, metric_names)
    init_distributed()  # under torchrun: one process group for every axis
    rank0 = group_info()[0] == 0
    ck = _load(args, args.checkpoint)
    splits = _splits(args.split)
    show = args.progress and rank0
    lines: dict[str, list[str]] = {}

    def on_record(_, rec):
        split_lines = lines.setdefault(rec.split, [
            f"{rec.split} split: {rec.data['n']} samples, {weights_label(ck, settings.common.weights)}, BN eval"])
        split_lines += _record_lines(rec) + (extra_lines(rec) if extra_lines else [])
        if rank0 and rec.metric == metric_names[-1]:
            if show:
                from tqdm.auto import tqdm
                tqdm.write("\n".join(split_lines))  # above the progress lines
            else:
                _out(args, "\n".join(split_lines))

    done = measure_all([Target(ck, metric_names, settings)], splits, source=DataSource(getattr(args, "data", None)),
                       device=args.device, progress=show, label=args.command, store=getattr(args, "resume_dir", None),
                       axis=args.axis, on_record=on_record)
    run = MeasurementRun(command=args.command, checkpoint=args.checkpoint, sha256=ck.sha256,
                         weights=weights_label(ck, settings.common.weights), records=done.records)
    if args.json and rank0:
        run.to_json(args.json, indent=1)
    return run


def cmd_hessian(args):
    names = M.names("hessian") if args.metric == "all" else [args.metric]

    def per_layer(rec):
        if not args.per_layer or rec.metric != "hessian-trace":
            return []
        return [f"      {n:46} {fmt.num(v['value'], 6, sci=4)} {fmt.interval(v['ci95'], 6)}"
                for n, v in rec.result.per_layer.items()]

    _measure_command(args, names, per_layer)


def cmd_landscape(args):
    from .parallel import group_info
    trajectory = getattr(args, "trajectory", None)
    if trajectory and args.metric not in (None, "surface"):
        raise FlatlensError(f"--trajectory draws a 2D slice (metric surface), not {args.metric}")
    name = "surface" if trajectory else (
        args.metric or next(n for n in M.names("landscape") if M.get(n).dim == args.dim))
    run = _measure_command(args, [name])
    if group_info()[0] != 0:
        return
    if args.npz:
        from .landscape.results import write_npz
        write_npz(args.npz, run.records)
    _landscape_files(args, run, [name])


def _landscape_files(args, run, names):
    """--h5 (loss-landscape's layout), --plot (the view) and --save-directions (the directions measured along)."""
    if getattr(args, "h5", None):
        from .landscape.h5 import write_landscape
        write_landscape(args.h5, run.records)
        _out(args, f"wrote {args.h5} (loss-landscape's HDF5 layout)")
    if getattr(args, "plot", None):
        from .plots import plot_view
        plot_view(run.records, args.plot)
        _out(args, f"wrote {args.plot}")
    if getattr(args, "save_directions", None):
        from .landscape.h5 import write_directions
        from .metrics.landscape import directions_used
        from .pipeline import DataSource
        settings = _settings(args, names)
        ck = _load(args, args.checkpoint)
        rec = run.records[0]
        x, y, _ = DataSource(getattr(args, "data", None)).select(ck.data, rec.split, settings.common)
        rows, obj, meta = directions_used(ck, x, y, names[0], settings, device=args.device)
        write_directions(args.save_directions, rows, obj.names, [tuple(s) for s in obj.shapes],
                         {**meta, "checkpoint": ck.path, "checkpoint_sha256": ck.sha256, "split": rec.split})
        _out(args, f"wrote {args.save_directions}: {rows.shape[0]} directions ({meta.get('kind')}, {rec.split} split)")


def cmd_interpolate(args):
    """The loss along (1 - a) w_A + a w_B on each split (the registry's pair entry, A its partner), printed, and
    written as typed records (--json), in loss-landscape's layout (--h5) and as a figure (--plot)."""
    from .checkpoint import weights_label
    from .pipeline import DataSource, MeasurementRun, Target, check_compatible, measure_all
    settings = _settings(args, ["interpolate"])
    a, b = _load(args, args.a), _load(args, args.b)
    if a.sha256 == b.sha256:
        raise FlatlensError(f"{args.a} and {args.b} are the same model: the line between them is one point")
    if a.arch != b.arch:
        raise FlatlensError(f"{args.a} is a {a.arch.name} {a.arch.kwargs}, {args.b} a {b.arch.name} "
                            f"{b.arch.kwargs}: interpolation needs one architecture")
    if args.data is None:
        check_compatible([a, b])
    settings.metrics["interpolate"].partner = a.sha256
    show = args.progress
    lines = []

    def on_record(_, rec):
        r = rec.result
        block = [f"{rec.split} split: {rec.data['n']} samples; a = 0: {args.a} ({r.endpoints['a'].get('weights')}), "
                 f"a = 1: {args.b} ({r.endpoints['b'].get('weights')}); BatchNorm {r.bn['policy']}"
                 + (f" on {r.bn['samples']} samples ({r.bn['batches']} batches)" if r.bn["batches"] else "")]
        block += _record_lines(rec)
        block.append(f"    {'a':>7} {'L(a)':>10} {'excess':>10}" + (f" {'accuracy':>9}" if r.accuracies else ""))
        for i, al in enumerate(r.alphas):
            acc = f" {100 * r.accuracies[i]:8.2f}%" if r.accuracies else ""
            block.append(f"    {al:7.3f} {fmt.num(r.losses[i], 6, sci=4):>10} "
                         f"{fmt.num(r.excess[i], 4, sci=3):>10}{acc}")
        block.append(f"    weights at each point: {r.quantization}")
        if show:
            from tqdm.auto import tqdm
            tqdm.write("\n".join(block))
        else:
            lines.append("\n".join(block))

    done = measure_all([Target(a, [], settings), Target(b, ["interpolate"], settings)], _splits(args.split),
                       source=DataSource(args.data), device=args.device, progress=show, label="interpolate",
                       axis=args.axis, on_record=on_record)
    _out(args, "\n".join(lines))
    run = MeasurementRun(command="interpolate", checkpoint=args.b, sha256=b.sha256,
                         weights=weights_label(b, settings.common.weights), records=done.records)
    if args.json:
        run.to_json(args.json, indent=1)
    _landscape_files(args, run, ["interpolate"])


def cmd_flatness(args):
    _measure_command(args, M.names("flatness"))


def cmd_sharpness(args):
    _measure_command(args, M.names("sharpness") if args.metric == "all" else [args.metric])


def cmd_compare(args):
    from .cache import ResultCache
    from .compare import compare, compare_groups, format_table, write_outputs
    from .parallel import group_info
    from .perturb import init_distributed
    names = M.names() if args.metric == "all" else [args.metric]
    settings = _settings(args, names)
    if args.group and args.checkpoints:
        raise FlatlensError("give either checkpoints or --group NAME CKPT..., not both")
    rank = init_distributed()[0]
    cache = ResultCache(None if args.no_cache else os.path.join(args.results, "cache"))
    kw = dict(cache=cache, device=args.device, data_file=args.data, progress=args.progress and rank == 0,
              axis=args.axis)
    if args.group:
        groups = {}
        for g in args.group:
            if len(g) < 2:
                raise FlatlensError(f"--group {g[0]}: give the group's name, then its checkpoints")
            if g[0] in groups:
                raise FlatlensError(f"group {g[0]!r} given twice")
            groups[g[0]] = [_load(args, p) for p in g[1:]]
        rep = compare_groups(groups, names, _splits(args.split), settings, paired=args.paired, **kw)
    else:
        if not args.checkpoints:
            raise FlatlensError("compare needs checkpoints (A.pt B.pt ...) or --group NAME CKPT... twice")
        if args.paired:
            raise FlatlensError("--paired compares groups of seeds: give --group NAME CKPT... twice")
        rep = compare([_load(args, p) for p in args.checkpoints], names, _splits(args.split), settings, **kw)
    if group_info()[0] != 0:  # every rank holds the same comparison; rank 0 prints and writes it
        return
    _out(args, format_table(rep))
    _out(args, f"cache: {rep.cache['hits']} hits, {rep.cache['misses']} computed")
    write_outputs(rep, json_path=args.json, csv_path=args.csv)
    if args.plot:
        from .plots import plot_compare
        plot_compare(rep, args.plot)


def cmd_import(args):
    from .importers import import_to_file
    if args.model:
        raise FlatlensError("--model checkpoints are rebuilt by running your code: measure them directly with "
                            "--model (a flatlens checkpoint must load without running code)")
    ck = import_to_file(args.checkpoint, args.out, _import_opts_from(args), args.format or "auto")  # read once
    p, q, d = ck.provenance, ck.quant, ck.data
    _out(args, f"wrote {args.out}: {p['source_format']} -> {ck.arch.name} ({ck.arch.kwargs}), "
               + (f"{q.bits}-bit QAT steps on {len(q.steps)} layers" if q else "full precision")
               + (f", {d.dataset} with test domain(s) {', '.join(d.test_domains)} ({d.split_rule} split)"
                  if d else ", no data protocol (measure with --data FILE)")
               + f"; mapping {p['mapping']}; source sha256 {p['source_sha256'][:16]}")


def _import_opts_from(args):
    from .importers import ImportOptions
    return ImportOptions(bits=args.bits if args.bits is not None else 7, state=args.state, arch=args.arch,
                         num_classes=args.num_classes, model=args.model, dataset=args.dataset,
                         data_root=args.data_root, test_domains=list(args.test_domain or []),
                         image_size=args.image_size)


def cmd_reproduce(args):
    from .reproduce import full_plan, quick_plan, run
    if args.jobs < 1:
        raise FlatlensError(f"--jobs must be >= 1; got {args.jobs}")
    if args.plan:  # power and cost, before any training
        from .power import default_pilot_path, format_plan, load_pilot
        plan = quick_plan(args.dataset) if args.quick else full_plan(args.dataset)
        path = args.pilot or default_pilot_path(plan.dataset)
        if not os.path.exists(path):
            raise FlatlensError(f"no pilot for {plan.dataset} at {path}; give --pilot RUN (a reproduce run's folder "
                                "or results.json)")
        print(format_plan(plan, load_pilot(path, plan), args.jobs))
        return
    if args.pilot:
        raise FlatlensError("--pilot is read by --plan only")
    res = run(args.out, quick=args.quick, device=args.device, quiet=not args.progress, jobs=args.jobs,
              dataset=args.dataset)
    _out(args, f"wrote {os.path.join(args.out, 'results.json')}, {os.path.join(args.out, 'report.md')} and "
               f"{len(res.figures)} figure files in {os.path.join(args.out, 'figures')} "
               f"({res.seconds['total']:.0f} s; measurements: {res.cache['measure']['misses']} computed, "
               f"{res.cache['measure']['hits']} from the cache)")


def cmd_figures(args):
    from .plots import make_figures
    from .reproduce import load_run
    run = load_run(args.results)
    files = make_figures(run, _figures_folder(args), formats=tuple(args.formats))
    _out(args, "\n".join(files))


def cmd_report(args):
    from .report import read_readme, update_readme, write_report
    from .reproduce import load_run
    run = load_run(args.results)
    if args.readme:
        read_readme(args.readme)  # its markers checked before the report is written
    out = _report_file(args)
    write_report(run, out)
    _out(args, f"wrote {out}")
    if args.readme:
        update_readme(run, args.readme)
        _out(args, f"updated the summary block of {args.readme}")




# ----------------------------------------------------------------------------- flags
def _common_flags(p):
    for f in dataclasses.fields(Common):
        flag = f.metadata.get("flag")
        if not flag:
            continue
        kw = {"help": f"{f.metadata['help']} (default {f.default})", "default": None}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        else:
            kw["type"] = type(f.default)
        p.add_argument(flag, **kw)


def _setting_flags(p, metric_names):
    """One flag per setting of the given metrics (a flag shared by several metrics sets each of them)."""
    flags: dict[str, list] = {}
    for name in metric_names:
        for f in dataclasses.fields(M.get(name).settings):
            flag = f.metadata.get("flag")
            if flag:
                flags.setdefault(flag, []).append((name, f))
    for flag, uses in flags.items():
        f = uses[0][1]
        meta = f.metadata
        defaults = "; ".join(f"{n}: {' '.join(map(str, fd.default)) if isinstance(fd.default, tuple) else fd.default}"
                             for n, fd in uses)
        kw = {"help": f"{meta['help']} (default {defaults})".replace("%", "%%"), "default": None}
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        if isinstance(f.default, bool):
            kw["action"] = "store_true"  # given: True; absent: None, the setting's default
        elif isinstance(f.default, tuple):
            kw["type"] = float
            kw["nargs"] = meta.get("nargs", "+")
        elif f.default is not None and "choices" not in meta:
            kw["type"] = type(f.default)
        if meta.get("nargs") == 2:
            kw["metavar"] = ("LO", "HI")
        p.add_argument(flag, **kw)


def _import_flags(p, *, arch=True, data=True):
    """How to read checkpoints flatlens did not write (see `flatlens import --help`)."""
    from .importers import FORMATS
    g = p.add_argument_group("checkpoints flatlens did not write")
    g.add_argument("--format", choices=["auto", "flatlens", *FORMATS], default="auto",
                   help="(default %(default)s: detected)")
    g.add_argument("--bits", type=int, help="QT-DoG files: the weight bits (not in the file; default 7)")
    g.add_argument("--state", help="which model of a file holding several (network, network_sma, ...)")
    if arch:
        from .models import RESNETS
        g.add_argument("--arch", choices=RESNETS, help="a torchvision state dict's ResNet")
    g.add_argument("--num-classes", type=int, help="a torchvision state dict's classes (checked)")
    g.add_argument("--model", help="package.module:factory building your own model (its code runs)")
    if data:
        g.add_argument("--dataset", help="the data protocol of a file that records none (pacs, vlcs, ...)")
        g.add_argument("--data-root", help="where the DomainBed images are (default: the file's data_dir)")
        g.add_argument("--test-domain", action="append", help="held-out domain (repeatable)")
    g.add_argument("--image-size", type=int, help="DomainBed images: side in pixels (default 224)")


def _axis_flag(p):
    p.add_argument("--axis", choices=["auto", "data", "points"], default="auto",
                   help="under torchrun, how ranks share the work: data (each holds a shard of the samples; "
                        "Hessian metrics), points (each evaluates some perturbations; landscape, flatness, noise), "
                        "or auto: each metric's own (default)")


def _costs(command: str | None) -> str:
    """What the defaults of a command's metrics cost (each entry's `cost`, measured on an idle 2-core machine)."""
    return ("Defaults cost, per checkpoint and split of the digits model on an idle 2-core machine: "
            + "; ".join(f"{n}: {M.get(n).cost}" for n in M.names(command)) + ".")


def _measure_flags(p, command: str, *, split_default="train", all_choice=True, positional=True):
    """A checkpoint, its samples, the metric choice among the entries this command measures, and their flags."""
    if positional:
        p.add_argument("checkpoint", help="a flatlens checkpoint (.pt)")
    p.add_argument("--split", choices=["train", "test", "both"], default=split_default,
                   help="source-domain training data or the held-out domain (default %(default)s)")
    _common_flags(p)
    p.add_argument("--data", help="a torch file {'x': tensor, 'y': tensor} to use instead of the checkpoint's data")
    p.add_argument("--device", default="cpu", help="(default %(default)s)")
    p.add_argument("--json", help="write every record (rows, full results, settings) as JSON here")
    _axis_flag(p)
    _import_flags(p)
    names = M.names(command)
    if all_choice and len(names) > 1:
        p.add_argument("--metric", choices=names + ["all"], default="all", help="(default %(default)s: every one)")
    _setting_flags(p, names)


def _train_flags(t):
    from .data import DATASETS, DEFAULT
    from .models import RESNETS
    t.add_argument("--config", help="a JSON file of training settings (experiments/*.json); flags override it")
    t.add_argument("--dataset", help=f"{DEFAULT} (default) or {', '.join(d for d in DATASETS if d != DEFAULT)}")
    t.add_argument("--data-root", help="folder holding the data set's files (DomainBed sets, rotated-fashion-mnist)")
    t.add_argument("--image-size", type=int, help="image side in pixels (digits-dg, rotated-fashion-mnist: 28 or 16; "
                                                  "default: the data set's own)")
    t.add_argument("--test-domain", action="append", help="held-out domain (repeatable); default 75")
    t.add_argument("--arch", choices=("small_cnn",) + RESNETS,
                   help="(default small_cnn; resnet50 for DomainBed sets)")
    t.add_argument("--width", type=int, help="small_cnn width (default 32)")
    t.add_argument("--pretrained", action="store_true", default=None, help="ImageNet weights (ResNets)")
    t.add_argument("--freeze-bn", action="store_true", default=None, help="keep BatchNorm in eval mode")
    t.add_argument("--bits", type=int, help="weight bits for QAT (2..8); omit (or 32) for full precision")
    t.add_argument("--per-tensor", action="store_true", default=None,
                   help="one step per tensor instead of per channel")
    t.add_argument("--quant-start", type=int, help="step at which quantization switches on (default 400; DomainBed "
                                                   "sets 2000)")
    t.add_argument("--steps", type=int, help="training steps (default 1000; DomainBed sets 5000)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3; DomainBed sets 5e-5)")
    t.add_argument("--weight-decay", type=float, help="(default 0)")
    t.add_argument("--batch-size", type=int, help="per source domain (default 32)")
    t.add_argument("--eval-every", type=int, help="steps between evaluations (default 100; DomainBed sets 300)")
    t.add_argument("--seed", type=int, help="(default 0)")
    t.add_argument("--split-seed", type=int, help="seed of the 80/20 domain splits (default 0)")
    t.add_argument("--device", help="(default cpu)")
    t.add_argument("--select", choices=("best-val", "last"),
                   help="which step the checkpoint keeps: the best in-domain validation accuracy (default; QAT: among "
                        "quantized steps) or the last (the same step for every run of a seed: pairs stay pairs)")
    t.add_argument("--prefix", help="a shared full-precision prefix (a training state up to --quant-start): trained "
                                    "and saved here if absent, else branched from, so runs of one seed share their "
                                    "first steps bit for bit (recorded as the checkpoint's pairing)")
    t.add_argument("--out", required=True, help="checkpoint path")
    t.add_argument("--resume", action="store_true", help="continue from OUT.partial after an interruption")
    t.add_argument("--snapshot-every", type=int, help="keep the weights every N steps (and at the first and last) in "
                                                       "OUT.snapshots, for flatlens landscape --trajectory")
    t.add_argument("--snapshot-dtype", choices=("float16", "float32"), default="float16",
                   help="snapshots are flat deltas from the run's starting weights in this precision (default "
                        "%(default)s: half the bytes, about 3 significant digits; float32: exact)")


def _evaluate_flags(e):
    e.add_argument("checkpoint")
    e.add_argument("--device", default="cpu", help="(default %(default)s)")
    e.add_argument("--json", help="write the accuracies (now and recorded) as JSON here")
    _import_flags(e)


def _ensemble_flags(en):
    en.add_argument("checkpoints", nargs="+")
    en.add_argument("--split", choices=["test", "val", "both"], default="test", help="(default %(default)s)")
    en.add_argument("--device", default="cpu", help="(default %(default)s)")
    en.add_argument("--json", help="write the accuracies as JSON here")
    _import_flags(en)


def _hessian_flags(h):
    _measure_flags(h, "hessian")
    h.add_argument("--per-layer", action="store_true", help="print the per-tensor traces")


def _landscape_flags(ls):
    names = M.names("landscape")
    _measure_flags(ls, "landscape", all_choice=False)
    dims = sorted({M.get(n).dim for n in names})
    ls.add_argument("--dim", type=int, choices=dims, default=dims[0],
                    help="; ".join(f"{M.get(n).dim}: {n}" for n in names) + " (default %(default)s)")
    ls.add_argument("--metric", choices=names, help="the landscape metric (default: the one --dim names)")
    ls.add_argument("--resume-dir", help="write finished chunks here; a rerun skips them")
    ls.add_argument("--npz", help="write the grid arrays here")
    _view_file_flags(ls)
    ls.add_argument("--save-directions", help="write the directions measured along (the first split's) as an HDF5 "
                                              "direction file (loss-landscape's layout), for --directions-file")


def _view_file_flags(p):
    p.add_argument("--h5", help="write the grids in loss-landscape's HDF5 layout (xcoordinates, ycoordinates, "
                                "train_loss, train_acc, test_loss, test_acc; a trajectory's proj_xcoord, proj_ycoord, "
                                "explained_variance_ratio_), which its plot_1D.py, plot_2D.py and h52vtp.py read")
    p.add_argument("--plot", help="draw the view as PNG / PDF / SVG here")


def _interpolate_flags(ip):
    ip.add_argument("a", help="the checkpoint at a = 0 (a pair's full-precision model, say)")
    ip.add_argument("b", help="the checkpoint at a = 1")
    _measure_flags(ip, "interpolate", split_default="both", positional=False)
    _view_file_flags(ip)


def _flatness_flags(f):
    _measure_flags(f, "flatness", split_default="both")
    f.add_argument("--resume-dir", help="write finished chunks here; a rerun skips them")


def _sharpness_flags(s):
    _measure_flags(s, "sharpness")
    s.add_argument("--resume-dir", help="write finished chunks here; a rerun skips them")


def _compare_flags(c):
    allm = M.names()
    c.add_argument("checkpoints", nargs="*", help="checkpoints compared with the first")
    c.add_argument("--group", nargs="+", action="append", metavar=("NAME", "CKPT"),
                   help="a named group of checkpoints (seeds of one method, at least 3); repeat for each group")
    c.add_argument("--paired", action="store_true",
                   help="groups: pair the checkpoints by seed and shared training prefix (recorded by flatlens "
                        "train / reproduce), measure each pair with its own seed, and test the paired difference")
    c.add_argument("--metric", default=M.default_metric(), choices=allm + ["all"], help="(default %(default)s)")
    c.add_argument("--split", choices=["train", "test", "both"], default="train", help="(default %(default)s)")
    _common_flags(c)
    _setting_flags(c, allm)
    c.add_argument("--data", help="a torch file {'x': tensor, 'y': tensor}: compare on these samples")
    c.add_argument("--results", default="results", help="results folder holding the cache (default %(default)s)")
    c.add_argument("--no-cache", action="store_true")
    c.add_argument("--json", help="write the comparison (rows, tests, records, settings) as JSON here")
    c.add_argument("--csv", help="write the table as CSV here")
    c.add_argument("--plot", help="PNG/PDF/SVG of each value with its interval")
    c.add_argument("--device", default="cpu", help="(default %(default)s)")
    _axis_flag(c)
    _import_flags(c)


def _import_command_flags(im):
    im.add_argument("checkpoint", help="the foreign file")
    im.add_argument("--out", required=True, help="the flatlens checkpoint to write")
    _import_flags(im)


def _reproduce_flags(r):
    r.add_argument("--quick", action="store_true", help="three seeds, one test domain, 150 steps (about 40 s on an "
                                                        "idle 2-core machine)")
    r.add_argument("--out", default="results/reproduce", help="output folder (default %(default)s)")
    from .reproduce import DATASETS as REPRODUCE_SETS
    r.add_argument("--dataset", default="digits-dg", choices=list(REPRODUCE_SETS),
                   help="digits-dg (default: real digits from five sources, embedded) or rotated-digits "
                        "(scikit-learn's 8x8 digits rotated into six domains)")
    r.add_argument("--device", default="cpu", help="(default %(default)s)")
    r.add_argument("--jobs", type=int, default=2, help="worker processes on CPU (default %(default)s)")
    r.add_argument("--plan", action="store_true",
                   help="print the plan before any work: seeds per configuration, each confirmatory claim's smallest "
                        "detectable difference from a pilot's spreads, and the expected time; train nothing")
    r.add_argument("--pilot", help="with --plan: the pilot (a reproduce run's folder or results.json, or a pilot "
                                   "JSON; default: the one flatlens ships for the data set)")


def _figures_flags(fg):
    fg.add_argument("--results", default="results/reproduce", help="a run folder or its results.json "
                                                                  "(default %(default)s)")
    fg.add_argument("--out", help="output folder (default: the run folder's figures/)")
    fg.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                    help="(default png pdf)")


def _report_flags(rp):
    rp.add_argument("--results", default="results/reproduce", help="a run folder or its results.json "
                                                                  "(default %(default)s)")
    rp.add_argument("--out", help="report path (default: the run folder's report.md)")
    rp.add_argument("--readme", help="also replace the generated summary block of this README")


# ----------------------------------------------------------------------------- the table of commands
def _snapshots_file(args) -> str | None:
    return f"{args.out}.snapshots" if args.snapshot_every else None


def _run_results_file(args) -> str:
    return os.path.join(args.results, "results.json") if os.path.isdir(args.results) else args.results


def _run_folder(args) -> str | None:
    """The folder of `--results` (a run folder or its results.json), or None where there is none to read (the
    reader's own message says so)."""
    if not os.path.exists(args.results):
        return None
    return args.results if os.path.isdir(args.results) else os.path.dirname(args.results)


def _report_file(args) -> str | None:
    """report's output: --out, or the run folder's report.md."""
    folder = _run_folder(args)
    return args.out or (folder is not None and os.path.join(folder, "report.md")) or None


def _figures_folder(args) -> str | None:
    """figures' output folder: --out, or the run folder's figures/."""
    folder = _run_folder(args)
    return args.out or (folder is not None and os.path.join(folder, "figures")) or None


def _figure_files(folder: str | None, formats) -> list[str]:
    """Every file `make_figures` may write into `folder` (each figure in each format)."""
    if folder is None:
        return []
    from .plots.figures import FIGURES
    return [os.path.join(folder, f"{name}.{fmt}") for name in FIGURES for fmt in formats]


def _reproduce_out(*names: str) -> Callable:
    """A path reproduce writes under --out (none with --plan, which writes nothing)."""
    return lambda a: None if a.plan else os.path.join(a.out, *names)


def _reproduce_figures(args) -> list[str]:
    from .reproduce import FIGURE_FORMATS
    return [] if args.plan else _figure_files(os.path.join(args.out, "figures"), FIGURE_FORMATS)


@dataclass(frozen=True)
class Command:
    """One subcommand: its flags, what it reads and writes (checked before any work), its handler. `inputs`:
    arguments naming files it reads (lists and groups flattened); `files` / `folders`: arguments naming the files
    / folders it writes. Each is an argument's name, or (flag, function of the parsed arguments) where the path
    is derived."""
    name: str
    help: str
    flags: Callable
    handler: Callable
    description: Callable[[], str] | None = None
    inputs: tuple = ()
    files: tuple = ()
    folders: tuple = ()

    @property
    def measures(self) -> bool:
        """It measures the registry entries that name it (`metrics.COMMANDS`; left out when none is registered)."""
        return self.name in M.COMMANDS


COMMANDS = (
    Command("train", "train an ERM or QAT model on a leave-one-domain-out protocol", _train_flags, cmd_train,
            inputs=("config",), files=("out", "prefix", ("--out", lambda a: a.out and a.out + ".partial"),
                                       ("--snapshot-every", _snapshots_file))),
    Command("evaluate", "print a checkpoint's accuracy per domain", _evaluate_flags, cmd_evaluate,
            inputs=("checkpoint",), files=("json",)),
    Command("ensemble", "EoQ: accuracy of the averaged outputs of several checkpoints", _ensemble_flags,
            cmd_ensemble, inputs=("checkpoints",), files=("json",)),
    Command("hessian", "Hessian eigenvalues, trace, spectral density or diagonal of a checkpoint", _hessian_flags,
            cmd_hessian, lambda: _costs("hessian"), inputs=("checkpoint", "data"), files=("json",)),
    Command("landscape", "1D curves or a 2D slice along random directions", _landscape_flags, cmd_landscape,
            lambda: _costs("landscape"),
            inputs=("checkpoint", "data", ("--directions-file", lambda a: getattr(a, "directions_file", None)),
                    ("--trajectory", lambda a: getattr(a, "trajectory", None))),
            files=("json", "npz", "h5", "plot", "save_directions"), folders=("resume_dir",)),
    Command("flatness", "SWAD-style local flatness at several radii, with 95%% CIs", _flatness_flags, cmd_flatness,
            lambda: _costs("flatness"),
            inputs=("checkpoint", "data"), files=("json",), folders=("resume_dir",)),
    Command("sharpness", "worst-case and adaptive sharpness, or the quantization-noise test, of a checkpoint",
            _sharpness_flags, cmd_sharpness,
            lambda: _costs("sharpness"),
            inputs=("checkpoint", "data"), files=("json",), folders=("resume_dir",)),
    Command("interpolate", "the loss along the straight line between two checkpoints, its barrier and where it peaks",
            _interpolate_flags, cmd_interpolate,
            lambda: ("(1 - a) w_A + a w_B on the train and test splits, BatchNorm statistics recomputed at each point "
                     "on training batches (--bn-stats interpolate: the naive rule); quantized models interpolated in "
                     "their latent weights, each point's weights by a stated rule (printed); the barrier max over "
                     "[0, 1] of L(a) minus the line between the endpoint losses, with its simultaneous 95 % interval "
                     "over the samples. " + _costs("interpolate")),
            inputs=("a", "b", "data"), files=("json", "h5", "plot")),
    Command("compare", "is one model (or method) flatter than another, by how much, how sure?", _compare_flags,
            cmd_compare,
            lambda: ("Checkpoints A B ...: measurement noise of these models (paired / Welch tests against the first). "
                     "--group NAME CKPT... (twice or more, at least 3 each): training noise, the checkpoints of a group "
                     "are its seeds (Welch over checkpoints; with --paired, the paired t over seeds matched by their "
                     "recorded seed and training prefix). Verdicts use Holm-adjusted p-values over every row printed. "
                     + _costs(None)),
            inputs=("checkpoints", "group", "data"), files=("json", "csv", "plot"),
            folders=(("--results", lambda a: None if a.no_cache else a.results),
                     ("--results", lambda a: None if a.no_cache else os.path.join(a.results, "cache")))),
    Command("import", "convert a DomainBed / QT-DoG / SWAD file or a torchvision state dict into a flatlens "
                      "checkpoint, provenance recorded", _import_command_flags, cmd_import,
            inputs=("checkpoint",), files=("out",)),
    Command("reproduce", "the paper's question end to end, a paired design with a stated confirmatory family "
                         "(the main job)", _reproduce_flags, cmd_reproduce,
            inputs=("pilot",),
            # everything the run writes, the last files too: a FIFO as RP/plan.json once blocked it, and RP/report.md
            # was refused only after the whole run
            files=tuple(("--out", _reproduce_out(f)) for f in ("plan.json", "results.json", "report.md"))
            + (("--out", _reproduce_figures),),
            folders=(("--out", _reproduce_out()),) + tuple(("--out", _reproduce_out(sub))
                                                            for sub in ("cache", "checkpoints", "figures"))),
    Command("figures", "draw the figures from a reproduce run's results.json", _figures_flags, cmd_figures,
            inputs=(("--results", _run_results_file),),
            folders=("out", ("default --out", lambda a: None if a.out else _figures_folder(a))),
            files=(("--out", lambda a: _figure_files(_figures_folder(a), a.formats)),)),
    Command("report", "write report.md (and the README's summary block) from a run's results", _report_flags,
            cmd_report, inputs=(("--results", _run_results_file),),
            files=("out", ("default --out", lambda a: None if a.out else _report_file(a)), "readme")),
)


def command(name: str) -> Command:
    return next(c for c in COMMANDS if c.name == name)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flatlens", description="How flat is a minimum? Hessian spectra, loss landscapes, "
                                             "sharpness, and quantization-aware training (QT-DoG).")
    p.add_argument("--version", action="version", version=f"flatlens {__version__}")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    common = _Parser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or messages")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an internal error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for c in COMMANDS:
        if c.measures and not M.names(c.name):
            continue  # every entry of this command was removed from the registry
        sp = sub.add_parser(c.name, help=c.help, parents=[common],
                            description=c.description() if c.description else None)
        c.flags(sp)
        sp.set_defaults(fn=c.handler)
    return p


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b) or (os.path.exists(a) and os.path.exists(b)
                                                                and os.path.samefile(a, b))
    except OSError:
        return False


def _paths(args, names) -> list[str]:
    """The paths the arguments `names` hold (lists and --group's NAME CKPT... flattened; derived ones computed).
    An empty string is kept (a path given as "" is refused, never silently ignored)."""
    out = []
    for n in names:
        v = n[1](args) if isinstance(n, tuple) else getattr(args, n, None)
        if n == "group":
            v = [q for g in (v or []) for q in g[1:]]
        out += [x for x in (v if isinstance(v, list) else [v]) if x is not None]
    return out


def _model_file(args) -> str | None:
    """The source file of --model's module (an input: no output may overwrite it)."""
    from .paths import module_file
    return module_file(args.model) if getattr(args, "model", None) else None


def _preflight(args) -> None:
    """Everything that can be checked before any work: the device, and every output path the command's table
    entry names (writable, of the right kind, never one of its inputs, never two outputs on one file)."""
    if getattr(args, "device", None) is not None:  # train's is None unless given (its config may name one)
        args.device = _device(args)  # resolved once ("auto" -> what is here): every later use sees a real device
    c = command(args.command)
    if "readme" in c.files and args.readme and not os.path.isfile(args.readme):
        raise FlatlensError(f"--readme {args.readme}: no such file")
    from .paths import check_input, check_output
    named = lambda names: [(n[0] if isinstance(n, tuple) else f"--{n.replace('_', '-')}", p)  # noqa: E731
                           for n in names for p in _paths(args, [n])]
    ins = named(c.inputs + (("--model", _model_file),))
    for flag, path in ins:
        check_input(path, flag, folder_ok=flag in ("--pilot", "--results"))
    inputs = [p for _, p in ins]
    files, folders = named(c.files), named(c.folders)
    for flag, path in folders + files:  # a folder first: its own line, not that of a file meant inside it
        check_output(path, flag, folder=(flag, path) in folders)
        for inp in inputs:
            if _same_file(path, inp):
                raise FlatlensError(f"{flag} {path} is also an input; it would be overwritten")
    seen = {}
    for flag, path in files:
        key = os.path.realpath(path)
        if key in seen:
            raise FlatlensError(f"{flag} and {seen[key]} name the same file {path}")
        seen[key] = flag
    if getattr(args, "plot", None):
        from .plots.figures import FORMATS
        ext = os.path.splitext(args.plot)[1][1:].lower()
        if ext not in FORMATS:
            raise FlatlensError(f"--plot {args.plot}: unknown format {ext or '(none)'!r}; use .{', .'.join(FORMATS)}")


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (exit 2), --help and --version (exit 0): a code, not an exception
        return e.code if isinstance(e.code, int) else 0
    # progress lines: off with --quiet (which also silences messages) or FLATLENS_QUIET (progress only)
    args.progress = not (args.quiet or os.environ.get("FLATLENS_QUIET"))
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"
    where = ""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: each rank's one line names it
        where = f" (rank {os.environ.get('RANK', '?')})"
        import signal

        def stopped(signum, frame):  # torchrun stops the other ranks when one fails
            print(f"flatlens: stopped{where}: another rank failed (its own line says why)", file=sys.stderr)
            os._exit(1)

        signal.signal(signal.SIGTERM, stopped)
    try:
        _preflight(args)
        args.fn(args)
    except FlatlensError as e:
        print(f"flatlens: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flatlens: interrupted (rerun the same command to resume where supported)", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: one line, exit 1, the traceback only with --debug
        if getattr(args, "debug", False):
            raise
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        print(f"flatlens: internal error in {args.command}{where}: {type(e).__name__}: {msg} (rerun with --debug "
              "for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
