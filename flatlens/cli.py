"""The `flatlens` command line. Bad input: one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from ._util import FlatlensError, atomic_write_bytes, atomic_write_text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"flatlens: error: {message} (see --help)\n")


def _out(args, text):
    if not getattr(args, "quiet", False):
        print(text)


def _write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def _data_for(args, ckpt, split):
    from .measure import load_data_file, select_data
    if getattr(args, "data", None):
        return load_data_file(args.data)
    return select_data(ckpt["data"], split, args.samples, args.seed)


def _objective(args, ckpt, split):
    from .measure import objective_for
    x, y, info = _data_for(args, ckpt, split)
    obj = objective_for(ckpt, x, y, device=args.device, weights=args.weights)
    return obj, info


def _splits(split):
    return ["train", "test"] if split == "both" else [split]


# ----------------------------------------------------------------------------- commands
def cmd_train(args):
    from .train import TrainConfig, train
    full_precision = args.bits == 32  # --bits 32: full precision, also over a config file's bits
    if full_precision:
        args.bits = None
    kw = dict(dataset=args.dataset, data_root=args.data_root, test_domains=args.test_domain, arch=args.arch,
              seed=args.seed, bits=args.bits, per_channel=not args.per_tensor, device=args.device,
              split_seed=args.split_seed, pretrained=args.pretrained, freeze_bn=args.freeze_bn)
    if args.config:
        cfg = _config_from_file(args.config)
        for k, v in kw.items():  # flags given on the command line override the file
            if v is not None and f"--{k.replace('_', '-')}" in sys.argv:
                setattr(cfg, k, v)
        if args.test_domain:
            cfg.test_domains = args.test_domain
        if args.bits is not None or full_precision:
            cfg.bits = args.bits
        if args.seed is not None and "--seed" in sys.argv:
            cfg.seed = args.seed
    elif args.dataset == "rotated-digits":
        cfg = TrainConfig(**{k: v for k, v in kw.items() if v is not None})
    else:
        if args.arch == "small_cnn":
            kw["arch"] = "resnet50"
        cfg = TrainConfig.paper_domainbed(**{k: v for k, v in kw.items() if v is not None})
    for name in ("steps", "quant_start", "lr", "batch_size", "eval_every", "weight_decay"):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.width is not None:
        cfg.arch_kwargs = {"width": args.width}
    if args.bits is None and args.quant_start is not None:
        raise FlatlensError("--quant-start needs --bits")
    ckpt = train(cfg, args.out, resume=args.resume, quiet=args.quiet)
    m = ckpt["metrics"]
    _out(args, f"wrote {args.out}: step {m['selected_step']} selected by in-domain validation; "
               f"val {100 * m['mean_val_acc']:.2f} %, test {100 * m['mean_test_acc']:.2f} % "
               f"({', '.join(f'{d}: {100 * a:.2f} %' for d, a in m['test_acc'].items())}); "
               f"{m['train_seconds']:.1f} s; size {m['size_ratio']:.3f} x fp32")


def _config_from_file(path):
    import dataclasses
    from .train import TrainConfig
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise FlatlensError(f"{path}: no such config file") from None
    except ValueError as e:
        raise FlatlensError(f"{path}: not valid JSON ({e})") from None
    train_cfg = raw.get("train", raw)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(train_cfg) - names
    if unknown:
        raise FlatlensError(f"{path}: unknown training setting(s) {', '.join(sorted(unknown))}")
    base = TrainConfig.paper_domainbed() if train_cfg.get("dataset", "rotated-digits") != "rotated-digits" else TrainConfig()
    for k, v in train_cfg.items():
        setattr(base, k, v)
    return base


def cmd_evaluate(args):
    from .checkpoint import load_checkpoint
    ck = load_checkpoint(args.checkpoint)
    m = ck["metrics"]
    q = ck["quant"]
    lines = [f"{args.checkpoint}: {ck['arch']['name']}, " + (f"{q['bits']}-bit QAT from step {q['start_step']}"
                                                             if q else "full precision")
             + f", {ck['data']['dataset']}, test domain(s) {', '.join(ck['data']['test_domains'])}, "
               f"selected step {m['selected_step']}"]
    for d, a in m["val_acc"].items():
        lines.append(f"  in-domain validation  {d:>14}: {100 * a:6.2f} %")
    for d, a in m["test_acc"].items():
        lines.append(f"  out-of-domain test    {d:>14}: {100 * a:6.2f} %")
    lines.append(f"  size: {m['packed_bytes']} bytes packed vs {m['fp32_bytes']} fp32 ({m['size_ratio']:.3f} x)")
    _out(args, "\n".join(lines))
    if args.json:
        _write_json(args.json, {"checkpoint": args.checkpoint, "sha256": ck["sha256"], "metrics": m})


def cmd_ensemble(args):
    from .checkpoint import load_checkpoint
    from .train import ensemble_accuracy
    cks = [load_checkpoint(p) for p in args.checkpoints]
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


def cmd_hessian(args):
    from . import hessian
    from .checkpoint import load_checkpoint, weights_label
    ck = load_checkpoint(args.checkpoint)
    metrics = ["eig", "trace", "density"] if args.metric == "all" else [args.metric]
    out = {"checkpoint": args.checkpoint, "sha256": ck["sha256"], "weights": weights_label(ck, args.weights),
           "results": {}}
    for split in _splits(args.split):
        obj, info = _objective(args, ck, split)
        res = {"data": info}
        lines = [f"{split} split: {info['n']} samples, {obj.num_params} parameters, {out['weights']}, BN eval"]
        if "eig" in metrics:
            r = hessian.top_eigenvalues(obj, args.k, which=args.which, method=args.method, tol=args.tol,
                                        max_hvp=args.max_hvp, seed=args.seed, backend=args.backend)
            res["eig"] = r.to_dict()
            lines.append(f"  eigenvalues ({args.which}, {r.method}): {', '.join(f'{v:.6g}' for v in r.values)}  "
                         f"[{r.n_hvp} HVPs, converged {r.converged}, {r.seconds:.1f} s]")
        if "trace" in metrics:
            r = hessian.trace(obj, method=args.trace_method, rtol=args.rtol, max_hvp=args.max_hvp, seed=args.seed,
                              backend=args.backend)
            res["trace"] = r.to_dict()
            lines.append(f"  trace ({r.method}): {r.value:.6g} ± {(r.ci95[1] - r.ci95[0]) / 2:.3g} (95% CI)  "
                         f"[{r.n_hvp} HVPs, converged {r.converged}, {r.seconds:.1f} s]")
            if args.per_layer:
                for name, v in r.per_layer.items():
                    lines.append(f"    {name:40} {v['value']:.6g} ± {1.96 * v['stderr']:.3g}")
        if "density" in metrics:
            r = hessian.density(obj, n_iter=args.density_iter, n_runs=args.density_runs, seed=args.seed)
            res["density"] = r.to_dict()
            lines.append(f"  spectral density (SLQ, {r.n_runs} runs x {r.n_iter} steps): support "
                         f"[{min(min(n) for n in r.nodes):.4g}, {max(max(n) for n in r.nodes):.4g}], "
                         f"mean eigenvalue {r.mean:.4g}")
        if "diag" in metrics:
            r = hessian.diagonal(obj, n_probes=args.probes, seed=args.seed)
            res["diag"] = r.to_dict()
            lines.append(f"  diagonal: {args.probes} probes, sum {sum(r.values):.6g}")
        out["results"][split] = res
        _out(args, "\n".join(lines))
    if args.json:
        _write_json(args.json, out)


def _rank0():
    from .landscape.runner import dist_info
    return dist_info()[0] == 0


def cmd_landscape(args):
    import numpy as np
    from . import landscape
    from .checkpoint import load_checkpoint, weights_label
    from .landscape.runner import init_distributed
    init_distributed()
    ck = load_checkpoint(args.checkpoint)
    lo, hi = args.range
    if args.points < 1 or not lo < hi:
        raise FlatlensError("--points must be >= 1 and --range LO HI must have LO < HI")
    xs = landscape.grid(lo, hi, args.points)
    out = {"checkpoint": args.checkpoint, "sha256": ck["sha256"], "weights": weights_label(ck, args.weights),
           "results": {}}
    arrays = {}
    for split in _splits(args.split):
        obj, info = _objective(args, ck, split)
        store = os.path.join(args.resume_dir, split) if args.resume_dir else None
        if args.dim == 1:
            r = landscape.random_curves(obj, xs, kind=args.kind, n_directions=args.directions, seed=args.seed,
                                        ignore=args.ignore, strategy=args.strategy, precision=args.precision,
                                        store=store, progress=not args.quiet)
            _out(args, f"{split}: {args.directions} {args.kind} directions x {len(xs)} points; loss at 0: "
                       f"{r.center_loss:.5g}; mean loss at a={xs[0]:g}: {r.mean[0]:.5g}, a={xs[-1]:g}: "
                       f"{r.mean[-1]:.5g}; strategy {r.evaluator['strategy']}; {r.seconds:.1f} s")
            arrays[f"{split}_losses"] = np.asarray(r.losses)
        else:
            r = landscape.random_surface(obj, xs, xs, kind=args.kind, seed=args.seed, ignore=args.ignore,
                                         strategy=args.strategy, precision=args.precision, store=store,
                                         progress=not args.quiet)
            L = np.asarray(r.losses)
            _out(args, f"{split}: {len(xs)} x {len(xs)} grid of {args.kind} directions; loss at centre "
                       f"{r.center_loss:.5g}, min {L.min():.5g}, max {L.max():.5g}; strategy "
                       f"{r.evaluator['strategy']}; {r.seconds:.1f} s")
            arrays[f"{split}_losses"] = L
            if r.accuracies is not None:
                arrays[f"{split}_accuracies"] = np.asarray(r.accuracies)
        d = r.to_dict()
        d["data"] = info
        out["results"][split] = d
    arrays["xs"] = xs
    if _rank0():
        if args.json:
            _write_json(args.json, out)
        if args.npz:
            import io
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(args.npz, buf.getvalue())


def cmd_flatness(args):
    from . import sharpness
    from .checkpoint import load_checkpoint, weights_label
    from .landscape.runner import init_distributed
    init_distributed()
    ck = load_checkpoint(args.checkpoint)
    out = {"checkpoint": args.checkpoint, "sha256": ck["sha256"], "weights": weights_label(ck, args.weights),
           "results": {}}
    for split in _splits(args.split):
        obj, info = _objective(args, ck, split)
        store = os.path.join(args.resume_dir, split) if args.resume_dir else None
        r = sharpness.local_flatness(obj, args.radii, n_directions=args.directions, seed=args.seed,
                                     strategy=args.strategy, precision=args.precision, store=store,
                                     progress=not args.quiet)
        lines = [f"{split} flatness ({info['n']} samples, {args.directions} directions, {out['weights']}):"]
        for rad, m, ci in zip(r.radii, r.mean, r.ci95):
            lines.append(f"  r = {rad:<8g} {m:.5g}  [{ci[0]:.5g}, {ci[1]:.5g}]")
        if _rank0():
            _out(args, "\n".join(lines))
        d = r.to_dict()
        d["data"] = info
        out["results"][split] = d
    if args.json and _rank0():
        _write_json(args.json, out)


def cmd_compare(args):
    from .cache import ResultCache
    from .checkpoint import load_checkpoint
    from .compare import compare, format_table, write_outputs
    from .measure import METRICS, Settings
    cks = [load_checkpoint(p) for p in args.checkpoints]
    metrics = list(METRICS) if args.metric == "all" else [args.metric]
    s = Settings(samples=args.samples, seed=args.seed)
    if args.radii:
        s.radii = tuple(args.radii)
    if args.directions:
        s.n_directions = args.directions
    cache = ResultCache(None if args.no_cache else os.path.join(args.results, "cache"))
    report = compare(cks, metrics, _splits(args.split), s, cache=cache, device=args.device, data_file=args.data,
                     progress=not args.quiet)
    _out(args, format_table(report))
    _out(args, f"cache: {report['cache']['hits']} hits, {report['cache']['misses']} computed")
    write_outputs(report, json_path=args.json, csv_path=args.csv)
    if args.plot:
        from .plots import plot_compare
        plot_compare(report, args.plot)


def cmd_reproduce(args):
    from .reproduce import run
    res = run(args.out, quick=args.quick, device=args.device, quiet=args.quiet, jobs=args.jobs)
    _out(args, f"wrote {os.path.join(args.out, 'results.json')}, {os.path.join(args.out, 'report.md')} and "
               f"{len(res.get('figures', []))} figure files in {os.path.join(args.out, 'figures')} "
               f"({res['seconds']['total']:.0f} s)")


def cmd_figures(args):
    from .plots import make_figures
    path = os.path.join(args.results, "results.json")
    if not os.path.exists(path):
        raise FlatlensError(f"{path}: no such file (run `flatlens reproduce --out {args.results}` first)")
    try:
        results = json.load(open(path))
    except ValueError:
        raise FlatlensError(f"{path}: not valid JSON") from None
    files = make_figures(results, args.out, formats=tuple(args.formats))
    _out(args, "\n".join(files))


# ----------------------------------------------------------------------------- parser
def _measure_args(p, split_default="train"):
    p.add_argument("checkpoint", help="a flatlens checkpoint (.pt)")
    p.add_argument("--split", choices=["train", "test", "both"], default=split_default,
                   help="source-domain training data or the held-out domain (default %(default)s)")
    p.add_argument("--samples", type=int, default=512, help="evaluation samples (default %(default)s)")
    p.add_argument("--data", help="a torch file {'x': tensor, 'y': tensor} to use instead of the checkpoint's data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["deployed", "latent"], default="deployed",
                   help="quantized checkpoints: the deployed weights s*round(clip(w/s)) (default) or latent ones")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the full result as JSON here")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flatlens", description="How flat is a minimum? Hessian spectra, loss landscapes, "
                                             "sharpness, and quantization-aware training (QT-DoG).")
    p.add_argument("--version", action="version", version=f"flatlens {__version__}")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    common = _Parser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or messages")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, parents=[common], **k)

    t = sub.add_parser("train", help="train an ERM or QAT model on a leave-one-domain-out protocol")
    t.add_argument("--config", help="a JSON file of training settings (experiments/*.json); flags override it")
    t.add_argument("--dataset", default="rotated-digits",
                   help="rotated-digits (default) or pacs, vlcs, officehome, terraincognita, domainnet")
    t.add_argument("--data-root", help="folder holding the DomainBed data set")
    t.add_argument("--test-domain", action="append", help="held-out domain (repeatable); default 75")
    t.add_argument("--arch", default="small_cnn", choices=["small_cnn", "resnet18", "resnet50"])
    t.add_argument("--width", type=int, help="small_cnn width (default 32)")
    t.add_argument("--pretrained", action="store_true", default=None, help="ImageNet weights (ResNets)")
    t.add_argument("--freeze-bn", action="store_true", default=None, help="keep BatchNorm in eval mode")
    t.add_argument("--bits", type=int, help="weight bits for QAT (2..8); omit (or 32) for full precision")
    t.add_argument("--per-tensor", action="store_true", help="one step per tensor instead of per channel")
    t.add_argument("--quant-start", type=int, help="step at which quantization switches on")
    t.add_argument("--steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--batch-size", type=int, help="per source domain")
    t.add_argument("--eval-every", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split-seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", required=True, help="checkpoint path")
    t.add_argument("--resume", action="store_true", help="continue from OUT.partial after an interruption")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="print a checkpoint's accuracy per domain")
    e.add_argument("checkpoint")
    e.add_argument("--json")
    e.set_defaults(fn=cmd_evaluate)

    en = sub.add_parser("ensemble", help="EoQ: accuracy of the averaged outputs of several checkpoints")
    en.add_argument("checkpoints", nargs="+")
    en.add_argument("--split", choices=["test", "val", "both"], default="test")
    en.add_argument("--device", default="cpu")
    en.add_argument("--json")
    en.set_defaults(fn=cmd_ensemble)

    h = sub.add_parser("hessian", help="Hessian eigenvalues, trace, spectral density or diagonal of a checkpoint")
    _measure_args(h)
    h.add_argument("--metric", choices=["eig", "trace", "density", "diag", "all"], default="all")
    h.add_argument("--k", type=int, default=1, help="number of eigenvalues")
    h.add_argument("--which", choices=["LA", "SA", "LM"], default="LA")
    h.add_argument("--method", choices=["lanczos", "power"], default="lanczos")
    h.add_argument("--tol", type=float, default=1e-4)
    h.add_argument("--trace-method", choices=["hutch++", "hutchinson"], default="hutch++")
    h.add_argument("--rtol", type=float, default=0.02, help="trace: stop when the 95%% CI half-width <= rtol*|tr|")
    h.add_argument("--max-hvp", type=int)
    h.add_argument("--per-layer", action="store_true", help="print the per-tensor traces")
    h.add_argument("--density-iter", type=int, default=80)
    h.add_argument("--density-runs", type=int, default=4)
    h.add_argument("--probes", type=int, default=100, help="diagonal: Hutchinson probes")
    h.add_argument("--backend", choices=["flatlens", "pyhessian"], default="flatlens")
    h.set_defaults(fn=cmd_hessian)

    ls = sub.add_parser("landscape", help="1D curves or a 2D slice along random directions")
    _measure_args(ls)
    ls.add_argument("--dim", type=int, choices=[1, 2], default=1)
    ls.add_argument("--kind", choices=["filter", "layer", "gaussian", "sphere"], default="filter")
    ls.add_argument("--ignore", choices=["biasbn", "none"], help="bias/BN policy (default per kind)")
    ls.add_argument("--range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"))
    ls.add_argument("--points", type=int, default=21, help="grid points per axis (0 is always on the grid)")
    ls.add_argument("--directions", type=int, default=10, help="1D: number of random directions")
    ls.add_argument("--strategy", choices=["auto", "loop", "vmap"], default="auto")
    ls.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    ls.add_argument("--resume-dir", help="write finished chunks here; a rerun skips them")
    ls.add_argument("--npz", help="write the grid arrays here")
    ls.set_defaults(fn=cmd_landscape)

    f = sub.add_parser("flatness", help="SWAD-style local flatness at several radii, with 95%% CIs")
    _measure_args(f, split_default="both")
    f.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
    f.add_argument("--directions", type=int, default=100)
    f.add_argument("--strategy", choices=["auto", "loop", "vmap"], default="auto")
    f.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    f.add_argument("--resume-dir", help="write finished chunks here; a rerun skips them")
    f.set_defaults(fn=cmd_flatness)

    c = sub.add_parser("compare", help="is one model flatter than another, by how much, with what confidence?")
    c.add_argument("checkpoints", nargs="+")
    c.add_argument("--metric", default="hessian-trace",
                   choices=["hessian-eig", "hessian-trace", "hessian-density", "flatness", "curve", "surface",
                            "sharpness", "qnoise", "all"])
    c.add_argument("--split", choices=["train", "test", "both"], default="train")
    c.add_argument("--samples", type=int, default=512)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--radii", type=float, nargs="+", help="flatness radii")
    c.add_argument("--directions", type=int, help="flatness directions")
    c.add_argument("--data", help="a torch file {'x': tensor, 'y': tensor}: compare on these samples")
    c.add_argument("--results", default="results", help="results folder holding the cache (default %(default)s)")
    c.add_argument("--no-cache", action="store_true")
    c.add_argument("--json")
    c.add_argument("--csv")
    c.add_argument("--plot", help="PNG/PDF of each value with its CI")
    c.add_argument("--device", default="cpu")
    c.set_defaults(fn=cmd_compare)

    r = sub.add_parser("reproduce", help="the paper's question end to end on rotated digits (the main job)")
    r.add_argument("--quick", action="store_true", help="one seed, one test domain, short training (< 3 min)")
    r.add_argument("--out", default="results/reproduce", help="output folder (default %(default)s)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--jobs", type=int, default=2, help="worker processes on CPU (default %(default)s)")
    r.set_defaults(fn=cmd_reproduce)

    fg = sub.add_parser("figures", help="draw the figures from a reproduce run's results.json")
    fg.add_argument("--results", default="results/reproduce")
    fg.add_argument("--out", default="figures")
    fg.add_argument("--formats", nargs="+", default=["png", "pdf"])
    fg.set_defaults(fn=cmd_figures)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet or os.environ.get("FLATLENS_QUIET"):
        os.environ["TQDM_DISABLE"] = "1"
    try:
        args.fn(args)
    except FlatlensError as e:
        print(f"flatlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flatlens: interrupted (rerun the same command to resume where supported)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
