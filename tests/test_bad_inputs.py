"""Every subcommand against bad input, table-driven: at least 15 cases each (tampered checkpoint fields, bad data
files, absurd options, devices that do not exist, unusable output paths). Each must exit with code 2 (bad input)
or 1 (internal error), print exactly one line on stderr and no traceback, and write or change no file."""
import copy
import hashlib
import json
import os
import stat

import shutil
from pathlib import Path

import pytest
import torch

from flatlens.checkpoint import save_checkpoint
from flatlens.cli import main
from flatlens.data import rotated_digits
from flatlens.train import TrainConfig, train


FIGURES = Path(__file__).resolve().parents[1] / "figures"  # the shipped run: results.json, report, figures


def build_small(width):
    """A small CNN's state dict of another width (a valid checkpoint of another architecture)."""
    from flatlens.models import build
    return build("small_cnn", width=width, num_classes=10, in_channels=1).state_dict()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good and tampered checkpoints, data files and results files, in one folder."""
    d = tmp_path_factory.mktemp("bad")
    data = rotated_digits()
    ck = {}
    for name, bits in (("fp", None), ("q4", 4)):
        ck[name] = train(TrainConfig(steps=4, eval_every=4, quant_start=2, bits=bits, arch_kwargs={"width": 2}),
                         str(d / f"{name}.pt"), quiet=True, data=data)

    def tampered(name, edit, base="q4"):
        c = copy.deepcopy(ck[base].to_dict())
        edit(c)
        save_checkpoint(d / f"{name}.pt", c)

    tampered("wide", lambda c: c["arch"]["kwargs"].__setitem__("width", 3) or c["state_dict"].update(
        build_small(3)), base="fp")
    tampered("kw_string", lambda c: c["arch"].__setitem__("kwargs", "width=8"))
    tampered("kw_bogus", lambda c: c["arch"]["kwargs"].__setitem__("bogus", 1))
    tampered("width_neg", lambda c: c["arch"]["kwargs"].__setitem__("width", -3))
    tampered("width_huge", lambda c: c["arch"]["kwargs"].__setitem__("width", 10 ** 7))
    tampered("arch_unknown", lambda c: c["arch"].__setitem__("name", "vgg99"))
    tampered("dom_unknown", lambda c: c["data"].__setitem__("test_domains", ["foo"]))
    tampered("dom_empty", lambda c: c["data"].__setitem__("train_domains", []))
    tampered("holdout", lambda c: c["data"].__setitem__("holdout", 3.0))
    tampered("split_str", lambda c: c["data"].__setitem__("split_seed", "0"))
    tampered("bits0", lambda c: c["quant"].__setitem__("bits", 0))
    tampered("bits99", lambda c: c["quant"].__setitem__("bits", 99))
    tampered("step_missing", lambda c: c["quant"]["steps"].__setitem__("nope.weight", torch.ones(1)))
    tampered("step_zero", lambda c: c["quant"]["steps"].__setitem__(next(iter(c["quant"]["steps"])), torch.zeros(2)))
    tampered("nan_weights", lambda c: c["state_dict"]["classifier.weight"].fill_(float("nan")))
    tampered("no_selected", lambda c: c["metrics"].pop("selected_step"))
    tampered("no_packed", lambda c: c["metrics"].pop("packed_bytes"))
    (d / "text.pt").write_text("not a checkpoint\n")
    (d / "trunc.pt").write_bytes((d / "fp.pt").read_bytes()[:500])
    x, y = data.tensors["0"]
    torch.save({"x": x[:10], "y": y[:9]}, d / "len.pt")
    torch.save({"x": x[:10], "y": y[:10] + 20}, d / "range.pt")
    torch.save({"x": x[:10], "y": y[:10].to(torch.uint8)}, d / "uint8.pt")
    torch.save({"x": x[:10], "y": y[:10].float()}, d / "float.pt")
    torch.save({"x": x[:10].repeat(1, 3, 1, 1), "y": y[:10]}, d / "channels.pt")
    torch.save({"x": x[:10]}, d / "noy.pt")
    (d / "results").mkdir()
    (d / "results" / "results.json").write_text(json.dumps({"plan": 3}))
    (d / "empty").mkdir()
    (d / "empty" / "results.json").write_text("{}")
    (d / "badjson").mkdir()
    (d / "badjson" / "results.json").write_text("{not json")
    (d / "dirjson").mkdir()
    (d / "dirjson" / "results.json").mkdir()
    (d / "listjson").mkdir()
    (d / "listjson" / "results.json").write_text("[1, 2]")
    (d / "a_file").write_text("x")
    (d / "dir.pt.snapshots").mkdir()  # where a run's snapshots would go
    torch.save({"fc.weight": torch.ones(2, 4), "fc.bias": torch.zeros(2)}, d / "sd.pt")  # a state dict, no conv1

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    torch.save({"args": {"x": Evil()}, "model_dict": {}}, d / "evil.pth")
    (d / "README.md").write_text("# no markers here\n")
    (d / "run").mkdir()
    (d / "run" / "plan.json").write_text("{damaged")
    (d / "cfg.json").write_text('{"steps": "many"}')
    (d / "cfg_bad.json").write_text("{oops")
    for name, text in (("cfg_list", "[1, 2]"), ("cfg_num", "3"), ("cfg_str", '"steps"'),
                       ("cfg_train_list", '{"train": [1]}'),
                       # settings of the wrong type: each once trained (and the checkpoint was refused after)
                       ("cfg_bool", '{"freeze_bn": "true"}'), ("cfg_train_bool", '{"train": {"freeze_bn": "yes"}}'),
                       ("cfg_per_channel", '{"per_channel": 1}'), ("cfg_pretrained", '{"pretrained": "no"}'),
                       ("cfg_bits", '{"bits": "4", "quant_start": 2, "steps": 4}'), ("cfg_arch", '{"arch": 3}'),
                       ("cfg_domains", '{"test_domains": "75"}'), ("cfg_kwargs", '{"arch_kwargs": [8]}'),
                       ("cfg_image", '{"image_size": "16"}'), ("cfg_select", '{"select": false}'),
                       ("cfg_dataset", '{"dataset": null}'), ("cfg_root", '{"data_root": 7}')):
        (d / f"{name}.json").write_text(text)
    (d / "cfg_dir.json").mkdir()
    # special files: a FIFO and (where the test may make one) a device node, as outputs and as inputs
    os.mkfifo(d / "fifo")
    try:
        os.mknod(d / "mynull", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (OSError, AttributeError):
        pass  # not root, or no mknod here: the FIFO cases still run
    # more tampering: dtypes, BatchNorm variances, misplaced steps, metadata of the wrong type
    tampered("int_weights", lambda c: c["state_dict"].__setitem__("classifier.weight",
                                                                  c["state_dict"]["classifier.weight"].int()))
    tampered("complex_nan", lambda c: c["state_dict"].__setitem__(
        "classifier.weight", c["state_dict"]["classifier.weight"].to(torch.complex64) * float("nan")))
    tampered("neg_var", lambda c: c["state_dict"]["features.1.running_var"].fill_(-1.0))
    tampered("step_bias", lambda c: c["quant"]["steps"].__setitem__("classifier.bias", torch.ones(10)))
    tampered("step_2d", lambda c: c["quant"]["steps"].__setitem__(
        "features.0.weight", c["quant"]["steps"]["features.0.weight"].reshape(-1, 1)))
    tampered("acc_str", lambda c: c["metrics"]["test_acc"].__setitem__("75", "high"))
    tampered("bool_str", lambda c: c["train"].__setitem__("freeze_bn", "true"))

    def nan_centre(c):  # a NaN loss at the centre, whatever the trained weights: every feature 1e30, logits +inf
        c["state_dict"]["features.9.bias"].fill_(1e30)
        c["state_dict"]["classifier.weight"].fill_(3e38)

    def huge_curv(c):  # a finite centre loss (logits 0.4 apart per class) whose Hessian overflows float32:
        c["state_dict"]["features.9.bias"].fill_(1e20)  # features of 1e20 make H_logits (x) f f^T about 1e40
        c["state_dict"]["classifier.weight"].copy_(torch.arange(10.0)[:, None].expand(10, 4) * 1e-21)

    tampered("nan_centre", nan_centre, base="fp")
    tampered("huge_curv", huge_curv, base="fp")
    torch.save({"x": x[:10].half(), "y": y[:10]}, d / "half.pt")
    torch.save({"x": x[:10].double(), "y": y[:10]}, d / "double.pt")
    torch.save({"x": x[:10, :, :1, :1].contiguous(), "y": y[:10]}, d / "tiny.pt")
    # foreign files the importers must refuse in one line (DomainBed-style dicts of the wrong types)
    conv = {"featurizer.network.conv1.weight": torch.ones(2, 3, 1, 1)}
    for name, raw in (("db_args_list", {"args": [1], "model_dict": conv}),
                      ("db_seed", {"args": {"trial_seed": "abc"}, "model_dict": conv}),
                      ("db_holdout", {"args": {"holdout_fraction": "x"}, "model_dict": conv}),
                      ("db_envs", {"args": {}, "test_envs": 5, "model_dict": conv}),
                      ("db_values", {"args": {}, "model_dict": {"featurizer.network.conv1.weight": 1}})):
        torch.save(raw, d / f"{name}.pth")
    torch.save({"conv1.weight": torch.ones(2, 3, 1, 1), "fc.weight": torch.tensor(1.0), "fc.bias": torch.zeros(1)},
               d / "sd0.pt")
    # user modules for --model: one that raises on import, one with a syntax error, factories that raise or exit
    (d / "bad_import.py").write_text("raise RuntimeError('broken on import')\n")
    (d / "bad_syntax.py").write_text("def make(:\n")
    (d / "bad_factory.py").write_text("def make():\n    raise ValueError('no model today')\n")
    (d / "exit_factory.py").write_text("def make():\n    raise SystemExit(7)\n")
    (d / "fzv.py").write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 2)\n")
    (d / "results_cache_file").mkdir()
    (d / "results_cache_file" / "cache").write_text("a file where the cache folder goes")
    # run folders holding a valid results.json (the shipped run's: a command that gets past preflight reads it and
    # reaches its writes) and a special file or a file where report / figures would write by default; reproduce
    # --out folders with one where the run writes its plan, results, report or figures
    shutil.copy(FIGURES / "results.json", d / "run_ok_results.json")
    nodes = {"run_fifo": ("report.md", "figures"), "run_figfile": ("figures/fig1_local_flatness.png",),
             "rp_plan": ("plan.json",), "rp_results": ("results.json",), "rp_report": ("report.md",),
             "rp_figures": ("figures",), "rp_figfile": ("figures/fig2_per_seed_pairs.pdf",)}
    for folder, names in nodes.items():
        for name in names:
            (d / folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(d / folder / name)
    for folder in ("run_fifo", "run_figfile", "run_file", "run_dev"):
        (d / folder).mkdir(exist_ok=True)
        os.link(d / "run_ok_results.json", d / folder / "results.json")  # one copy, several names
    (d / "run_file" / "figures").write_text("a file where the figures folder goes")
    (d / "rp_dev").mkdir()
    for path in ("run_dev/report.md", "run_dev/figures", "rp_dev/report.md"):
        try:
            os.mknod(d / path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except (OSError, AttributeError):
            pass  # not root: the cases naming these folders are skipped
    return d


TAMPERED = ["kw_string", "kw_bogus", "width_neg", "width_huge", "arch_unknown", "dom_unknown", "dom_empty",
            "holdout", "split_str", "bits0", "bits99", "step_missing", "step_zero", "nan_weights", "no_selected",
            "no_packed", "text", "trunc", "missing", "int_weights", "complex_nan", "neg_var", "step_bias", "step_2d",
            "acc_str", "bool_str"]
DATA = ["len", "range", "uint8", "float", "channels", "noy", "missing_data", "half", "double", "tiny"]
LONG = "x" * 300 + ".json"  # a name past the file system's 255 bytes
DEVICES = ["cuda", "tpu", "mps", "meta", "xyz"]


def _measuring(cmd, extra=()):
    """Cases for hessian / landscape / flatness: tampered files, data files, devices, numbers, outputs."""
    small = ["--samples", "16"]
    cases = [[cmd, f"{t}.pt", *small, *extra] for t in TAMPERED]
    cases += [[cmd, "fp.pt", "--data", f"{f}.pt", *small, *extra] for f in DATA]
    cases += [[cmd, "fp.pt", "--device", dev, *extra] for dev in DEVICES]
    cases += [[cmd, "fp.pt", "--samples", "0", *extra], [cmd, "fp.pt", "--samples", "-1", *extra],
              [cmd, "fp.pt", "--seed", "99999999999999999999999", *extra], [cmd, "fp.pt", "--seed", "-1", *extra],
              [cmd, "fp.pt", "--json", "fp.pt", *small, *extra], [cmd, "fp.pt", "--json", "results", *small, *extra],
              [cmd, "fp.pt", "--json", "a_file/out.json", *small, *extra], [cmd, "fp.pt", "--split", "val"],
              [cmd, "fp.pt", "--bogus-flag"], [cmd, "fp.pt", "--json", "fifo", *small, *extra],
              [cmd, "fp.pt", "--json", "mynull", *small, *extra], [cmd, "fp.pt", "--json", "/proc/x.json", *small, *extra],
              [cmd, "fp.pt", "--json", LONG, *small, *extra], [cmd, "fp.pt", "--json", "", *small, *extra],
              [cmd, "nan_centre.pt", *small, *extra], [cmd, "fifo", *small, *extra],
              [cmd, "sd.pt", "--model", "fzv:make", "--data", "len.pt", "--json", "fzv.py", *extra]]
    cases += [[cmd, "sd.pt", "--model", f"{m}:make", "--data", "range.pt", *extra]
              for m in ("bad_import", "bad_syntax", "bad_factory", "exit_factory")]
    return cases


CASES = {
    "train": [["train", "--out", "m.pt", "--lr", "nan"], ["train", "--out", "m.pt", "--lr", "-1"],
              ["train", "--out", "m.pt", "--lr", "inf"], ["train", "--out", "m.pt", "--weight-decay", "nan"],
              ["train", "--out", "m.pt", "--seed", "99999999999999999999999"],
              ["train", "--out", "m.pt", "--steps", "0"], ["train", "--out", "m.pt", "--batch-size", "0"],
              ["train", "--out", "m.pt", "--eval-every", "-5"], ["train", "--out", "m.pt", "--bits", "1"],
              ["train", "--out", "m.pt", "--bits", "99"], ["train", "--out", "m.pt", "--width", "0"],
              ["train", "--out", "m.pt", "--width", "100000"], ["train", "--out", "m.pt", "--test-domain", "foo"],
              ["train", "--out", "m.pt", "--quant-start", "5"], ["train", "--out", "m.pt", "--device", "tpu"],
              ["train", "--out", "results"], ["train", "--out", "a_file/m.pt"],
              ["train", "--out", "m.pt", "--config", "missing.json"],
              ["train", "--out", "m.pt", "--config", "cfg_bad.json"],
              ["train", "--out", "m.pt", "--dataset", "mnist"],
              ["train", "--out", "m.pt", "--bits", "4", "--quant-start", "5000", "--steps", "10"],
              ["train", "--out", "m.pt", "--config", "cfg.json"], ["train"],
              ["train", "--out", "m.pt", "--split-seed", str(2 ** 70)], ["train", "--out", "fifo"],
              ["train", "--out", "mynull"], ["train", "--out", "/proc/m.pt"], ["train", "--out", ""],
              ["train", "--out", "m.pt", "--config", "fifo"],
              ["train", "--out", "m.pt", "--snapshot-every", "0"], ["train", "--out", "m.pt", "--snapshot-every", "-2"],
              ["train", "--out", "m.pt", "--snapshot-every", "2", "--snapshot-dtype", "int8"],
              ["train", "--out", "dir.pt", "--snapshot-every", "2"]]
    + [["train", "--out", "m.pt", "--config", f"{c}.json"] for c in (
        "cfg_list", "cfg_num", "cfg_str", "cfg_train_list", "cfg_dir", "cfg_bool", "cfg_train_bool",
        "cfg_per_channel", "cfg_pretrained", "cfg_bits", "cfg_arch", "cfg_domains", "cfg_kwargs", "cfg_image",
        "cfg_select", "cfg_dataset", "cfg_root")],
    "evaluate": [["evaluate", f"{t}.pt"] for t in TAMPERED] + [["evaluate", "fp.pt", "--json", "fp.pt"],
                                                                 ["evaluate", "fp.pt", "--device", "tpu"],
                                                                 ["evaluate", "fp.pt", "--json", "fifo"],
                                                                 ["evaluate", "fp.pt", "--json", "mynull"],
                                                                 ["evaluate", "fp.pt", "--json", ""]],
    "ensemble": [["ensemble", "fp.pt", f"{t}.pt"] for t in TAMPERED]
    + [["ensemble", "fp.pt", "q4.pt", "--device", d] for d in DEVICES]
    + [["ensemble", "fp.pt", "q4.pt", "--json", "q4.pt"], ["ensemble", "fp.pt", "--split", "all"]],
    "hessian": _measuring("hessian") + [["hessian", "fp.pt", "--metric", "hessian-eig", "--tol", "nan"],
                                        ["hessian", "fp.pt", "--metric", "hessian-trace", "--rtol", "nan"],
                                        ["hessian", "fp.pt", "--metric", "hessian-eig", "--max-hvp", "0"],
                                        ["hessian", "fp.pt", "--metric", "hessian-eig", "--tol", "-1"],
                                        ["hessian", "fp.pt", "--metric", "eig"],
                                        ["hessian", "fp.pt", "--metric", "hessian-eig", "--k", "1000000"],
                                        ["hessian", "huge_curv.pt", "--metric", "hessian-trace", "--samples", "16"]],
    "landscape": _measuring("landscape") + [["landscape", "fp.pt", "--points", "0"],
                                            ["landscape", "fp.pt", "--trajectory", "missing.snapshots"],
                                            ["landscape", "fp.pt", "--trajectory", "fp.pt"],
                                            ["landscape", "fp.pt", "--trajectory", "text.pt"],
                                            ["landscape", "fp.pt", "--directions-file", "missing.h5"],
                                            ["landscape", "fp.pt", "--directions-file", "a_file", "--samples", "16"],
                                            ["landscape", "fp.pt", "--kind", "eigen", "--eigen-tol", "0"],
                                            ["landscape", "fp.pt", "--h5", "fp.pt", "--samples", "16"],
                                            ["landscape", "fp.pt", "--save-directions", "results", "--samples", "16"],
                                            ["landscape", "fp.pt", "--range", "1", "-1"],
                                            ["landscape", "fp.pt", "--range", "nan", "1"],
                                            ["landscape", "fp.pt", "--npz", "fp.pt", "--samples", "16"],
                                            ["landscape", "fp.pt", "--resume-dir", "a_file", "--samples", "16"],
                                            ["landscape", "fp.pt", "--directions", "0"]],
    "interpolate": [["interpolate", "fp.pt", f"{t}.pt", "--samples", "16"] for t in TAMPERED]
    + [["interpolate", "fp.pt", "q4.pt", "--data", f"{f}.pt", "--samples", "16"] for f in DATA]
    + [["interpolate", "fp.pt", "q4.pt", "--device", d] for d in DEVICES]
    + [["interpolate", "fp.pt", "fp.pt"], ["interpolate", "fp.pt", "q4.pt", "--interp-range", "0.2", "1"],
       ["interpolate", "fp.pt", "q4.pt", "--interp-range", "0", "0.9"],
       ["interpolate", "fp.pt", "q4.pt", "--interp-range", "nan", "1"], ["interpolate", "fp.pt", "q4.pt",
                                                                         "--interp-points", "2"],
       ["interpolate", "fp.pt", "q4.pt", "--bn-batches", "0"], ["interpolate", "fp.pt", "q4.pt", "--bn-stats", "x"],
       ["interpolate", "fp.pt", "q4.pt", "--json", "q4.pt"], ["interpolate", "fp.pt", "q4.pt", "--h5", "fp.pt"],
       ["interpolate", "fp.pt", "q4.pt", "--plot", "x.bogus"], ["interpolate", "fp.pt", "q4.pt", "--h5", "results"],
       ["interpolate", "fp.pt", "q4.pt", "--json", "o.json", "--h5", "o.json"], ["interpolate", "fp.pt"],
       ["interpolate", "fp.pt", "wide.pt", "--samples", "16"]],
    "flatness": _measuring("flatness") + [["flatness", "fp.pt", "--radii", "-1"],
                                          ["flatness", "fp.pt", "--radii", "nan"],
                                          ["flatness", "fp.pt", "--directions", "0"],
                                          ["flatness", "fp.pt", "--radii", "1e30", "--directions", "2",
                                           "--samples", "16", "--split", "train"],
                                          ["flatness", "fp.pt", "--resume-dir", "a_file"],
                                          ["flatness", "fp.pt", "--resume-dir", "/proc/x"]],
    "sharpness": _measuring("sharpness") + [["sharpness", "fp.pt", "--rho", "1e30"],
                                            ["sharpness", "fp.pt", "--rho", "0"],
                                            ["sharpness", "fp.pt", "--qnoise-samples", "1"]],
    "compare": [["compare", "fp.pt", f"{t}.pt", "--no-cache", "--samples", "16"] for t in TAMPERED]
    + [["compare", "fp.pt", "q4.pt", "--data", f"{f}.pt", "--no-cache", "--samples", "16"] for f in DATA]
    + [["compare", "fp.pt", "q4.pt", "--device", d] for d in DEVICES]
    + [["compare", "fp.pt", "q4.pt", "--json", "q4.pt"], ["compare", "fp.pt", "q4.pt", "--csv", "fp.pt"],
       ["compare", "fp.pt", "q4.pt", "--plot", "x.bogus"], ["compare", "fp.pt", "q4.pt", "--directions", "0"],
       ["compare", "fp.pt", "q4.pt", "--metric", "flatness", "--radii", "nan"],
       ["compare", "fp.pt", "q4.pt", "--json", "o.json", "--csv", "o.json"],
       ["compare", "fp.pt", "q4.pt", "--results", "a_file"], ["compare"],
       ["compare", "--group", "a", "fp.pt", "--group", "b", "q4.pt"],
       ["compare", "fp.pt", "--group", "a", "fp.pt", "q4.pt"], ["compare", "fp.pt", "q4.pt", "--qnoise-bits", "1"],
       ["compare", "fp.pt", "fp.pt", "--metric", "qnoise", "--qnoise-steps", "learned", "--no-cache"],
       ["compare", "fp.pt", "q4.pt", "--results", "/proc/x"], ["compare", "fp.pt", "q4.pt", "--json", "fifo"],
       ["compare", "fp.pt", "q4.pt", "--results", "results_cache_file"],
       ["compare", "fp.pt", "nan_centre.pt", "--no-cache", "--samples", "16"],
       ["compare", "nan_centre.pt", "fp.pt", "--no-cache", "--samples", "16"],
       ["compare", "--paired", "fp.pt", "q4.pt"],
       ["compare", "--group", "a", "fp.pt", "q4.pt", "fp.pt", "--group", "b", "q4.pt", "fp.pt", "q4.pt"]],
    "reproduce": [["reproduce", "--jobs", "0"], ["reproduce", "--jobs", "-1"], ["reproduce", "--jobs", "x"],
                  ["reproduce", "--jobs", "1.5"], ["reproduce", "--out", "a_file"],
                  ["reproduce", "--out", "a_file/run"], ["reproduce", "--out", "run", "--quick"]]
    + [["reproduce", "--quick", "--out", "r2", "--device", d] for d in DEVICES]
    + [["reproduce", "--bogus"], ["reproduce", "--quick", "--out", "r3", "--jobs", "0"],
       ["reproduce", "--out", "run"], ["reproduce", "--out", "/proc/x"], ["reproduce", "--out", ""],
       ["reproduce", "--plan", "--pilot", "fifo"], ["reproduce", "--plan", "--pilot", "a_file"],
       ["reproduce", "--pilot", "fp.pt"], ["reproduce", "--out", "results_cache_file"]]
    # every file the run writes, checked before it starts: a FIFO as plan.json blocked it; the others were
    # refused only after the whole run
    + [["reproduce", "--quick", "--out", rp] for rp in ("rp_plan", "rp_results", "rp_report", "rp_figures",
                                                        "rp_figfile", "rp_dev")],
    "import": [["import", f"{t}.pt", "--out", "o.pt"] for t in ("text", "trunc", "missing", "fp", "q4")]
    + [["import", "sd.pt", "--out", "o.pt", *extra] for extra in (
        [], ["--arch", "resnet50"], ["--format", "domainbed"], ["--format", "bogus"], ["--model", "not a spec"],
        ["--model", "os:system"], ["--arch", "resnet18", "--num-classes", "3"], ["--model", "nomodule_xyz:make"])]
    + [["import", "sd.pt", "--out", "results"], ["import", "sd.pt", "--out", "sd.pt"], ["import", "sd.pt"],
       ["import", "evil.pth", "--out", "o.pt"], ["import", "sd0.pt", "--arch", "resnet18", "--out", "o.pt"],
       ["import", "fp.pt", "--out", "fifo"]]
    + [["import", f"{f}.pth", "--out", "o.pt"] for f in ("db_args_list", "db_seed", "db_holdout", "db_envs",
                                                         "db_values")],
    "figures": [["figures", "--results", r] for r in ("missing", "empty", "results", "badjson", "dirjson",
                                                       "listjson", "a_file", "results/results.json", "README.md")]
    + [["figures", "--results", "results", "--formats", "bogus"], ["figures", "--results", "results", "--out", "a_file"],
       ["figures", "--results", "results", "--out", "a_file/x"], ["figures", "--bogus"],
       ["figures", "--results", "empty", "--out", "figs"], ["figures", "--results", "badjson", "--formats", "png"],
       ["figures", "--results", "fifo"], ["figures", "--results", "results", "--out", "/proc/figs"],
       # the default output folder run/figures and the files in it, checked like --out (a FIFO, a file or a
       # device there: "internal error ... FileExistsError" after loading the run)
       ["figures", "--results", "run_fifo"], ["figures", "--results", "run_file"], ["figures", "--results", "run_dev"],
       ["figures", "--results", "run_figfile"], ["figures", "--results", "run_ok_results.json", "--out", "run_fifo/figures"],
       ["figures", "--results", "run_ok_results.json", "--out", "run_figfile/figures", "--formats", "png"]],
    "report": [["report", "--results", r] for r in ("missing", "empty", "results", "badjson", "dirjson", "listjson",
                                                     "a_file", "README.md")]
    + [["report", "--results", "results", "--out", "results"], ["report", "--results", "results", "--out", "a_file/x"],
       ["report", "--results", "results", "--readme", "missing.md"],
       ["report", "--results", "results", "--readme", "README.md"], ["report", "--bogus"],
       ["report", "--results", "empty", "--out", "r.md"], ["report", "--results", "empty/results.json",
                                                            "--out", "empty/results.json"],
       ["report", "--results", "fifo"], ["report", "--results", "results", "--out", "fifo"],
       ["report", "--results", "results", "--out", ""],
       # the default output, run/report.md, checked like --out (a FIFO there was replaced, exit 0)
       ["report", "--results", "run_fifo"], ["report", "--results", "run_fifo/results.json"],
       ["report", "--results", "run_dev"]],
}


_HASHES: dict = {}


def _snapshot(folder):
    """Every entry's inode and content hash (a special file by its kind): a file replaced by a rename shows. A
    regular file's hash is remembered by its inode, size, mtime and ctime (any write moves the ctime), so the
    large results.json files are hashed once, not twice per case."""
    out = {}
    for dp, dn, fs in os.walk(folder):
        for f in fs:
            p = os.path.join(dp, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                sig = (p, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if sig not in _HASHES:
                    _HASHES[sig] = hashlib.sha256(open(p, "rb").read()).hexdigest()
                body = _HASHES[sig]
            else:
                body = stat.S_IFMT(st.st_mode)
            out[p] = (st.st_ino, body)
        for dname in dn:
            out[os.path.join(dp, dname)] = "dir"
    return out


# the cases that need a device node, and where the world fixture makes it (os.mknod: root only)
DEVICE_NODES = {"mynull": "mynull", "run_dev": "run_dev/report.md", "rp_dev": "rp_dev/report.md"}


def _missing_device(world, args) -> str | None:
    """The device node this case needs and the fixture could not make, or None."""
    for arg in args:
        node = DEVICE_NODES.get(str(arg).split("/")[0])
        if node is not None:
            try:
                if stat.S_ISCHR(os.lstat(world / node).st_mode):
                    continue
            except OSError:
                pass
            return node
    return None


def _case_id(command, i, args):
    text = " ".join(a if len(a) < 40 else a[:12] + "..." for a in args[1:])
    return f"{command}-{i:02d}: {text}"


ALL_CASES = [pytest.param(args, id=_case_id(command, i, args))
             for command in sorted(CASES) for i, args in enumerate(CASES[command])]


def test_every_command_has_at_least_15_bad_inputs():
    from flatlens.cli import COMMANDS
    for c in COMMANDS:
        assert len(CASES.get(c.name, [])) >= 15, f"{c.name} has only {len(CASES.get(c.name, []))} cases"


@pytest.mark.parametrize("args", ALL_CASES)
def test_every_bad_input_is_refused_in_one_line_and_changes_nothing(args, world, capsys, monkeypatch):
    missing = _missing_device(world, args)
    if missing:  # never run with a regular file in its place: that case would test something else
        pytest.skip(f"needs the device node {missing}, which os.mknod could not make here (it needs root)")
    monkeypatch.chdir(world)
    monkeypatch.syspath_prepend(str(world))  # --model modules written into the folder import from there
    before = _snapshot(world)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (args, code, err)  # bad input: exit 2, never an internal error
    assert err.count("\n") == 1 and err.startswith("flatlens: error:"), (args, err)
    assert "Traceback" not in err, (args, err)
    assert _snapshot(world) == before, (args, "a file was written or changed")


# the outputs a command derives (report's and figures' defaults, every file reproduce writes) are checked with the
# explicit ones, before any work: the run is never read, the reproduce run never started
DERIVED = [["report", "--results", "run_fifo"], ["report", "--results", "run_fifo/results.json"],
           ["report", "--results", "run_dev"], ["figures", "--results", "run_fifo"],
           ["figures", "--results", "run_file"], ["figures", "--results", "run_dev"],
           ["figures", "--results", "run_figfile"]] + [["reproduce", "--quick", "--out", rp] for rp in (
    "rp_plan", "rp_results", "rp_report", "rp_figures", "rp_figfile", "rp_dev")]


@pytest.mark.parametrize("args", [pytest.param(a, id=" ".join(a)) for a in DERIVED])
def test_derived_outputs_are_refused_before_any_work(args, world, capsys, monkeypatch):
    import flatlens.reproduce as R
    missing = _missing_device(world, args)
    if missing:
        pytest.skip(f"needs the device node {missing}, which os.mknod could not make here (it needs root)")
    monkeypatch.chdir(world)
    for name in ("load_run", "run"):  # what reads the run / starts the work: never reached
        monkeypatch.setattr(R, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} reached with {args}"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and ("FIFO" in err or "device" in err or "file" in err), err


@pytest.mark.parametrize("args", [["flatness", "nan_centre.pt"], ["hessian", "nan_centre.pt"],
                                  ["compare", "fp.pt", "nan_centre.pt", "--no-cache"],
                                  ["compare", "nan_centre.pt", "fp.pt", "--no-cache"],
                                  ["compare", "fp.pt", "q4.pt", "nan_centre.pt", "--metric", "all", "--no-cache"]],
                         ids=" ".join)
def test_a_nan_centre_loss_is_refused_by_name_before_anything_is_measured(args, world, capsys, monkeypatch):
    # every checkpoint's centre loss is checked before the first measurement, in whatever order they come
    import flatlens.pipeline as P
    monkeypatch.chdir(world)
    monkeypatch.setattr(P, "measure", lambda ck, *a, **k: pytest.fail(f"measured {ck.name} first"))
    assert main([*args, "--samples", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flatlens: error: nan_centre.pt: its loss at the centre is nan")


@pytest.mark.parametrize("args", [["hessian", "huge_curv.pt", "--metric", "hessian-trace"],
                                  ["compare", "huge_curv.pt", "fp.pt", "--metric", "hessian-trace", "--no-cache"]],
                         ids=" ".join)
def test_a_hessian_vector_product_that_overflows_names_the_checkpoint(args, world, capsys, monkeypatch):
    # its centre loss is finite (it passes the check up front); the first HVP is not: the line says whose
    monkeypatch.chdir(world)
    assert main([*args, "--samples", "16", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hessian-trace of huge_curv.pt (train): a Hessian-vector product came out " \
        "non-finite" in err, err


def test_an_atomic_write_never_replaces_a_special_file(tmp_path):
    # the last line of defence behind _preflight (a path it did not know of): the rename would replace the FIFO
    from flatlens import FlatlensError
    from flatlens._util import atomic_write_text
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ino = os.lstat(fifo).st_ino
    with pytest.raises(FlatlensError, match="is a FIFO; writing there would replace it"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.lstat(fifo).st_ino == ino
    assert os.listdir(tmp_path) == ["fifo"]  # no temporary file left either
