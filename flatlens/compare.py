"""`flatlens compare`: every checkpoint measured on the same samples, with the difference to the first one,
its CI, and a verdict per row."""
from __future__ import annotations

import csv
import io
import json

from ._util import FlatlensError, atomic_write_text
from .cache import ResultCache
from .measure import METRICS, Settings, difference, load_data_file, measure, select_data, versions


def check_compatible(ckpts: list[dict]) -> None:
    first = ckpts[0]
    for c in ckpts[1:]:
        if c["data"]["dataset"] != first["data"]["dataset"] or c["data"]["test_domains"] != first["data"]["test_domains"]:
            raise FlatlensError(f"{c['path']} was trained on {c['data']['dataset']} (test {c['data']['test_domains']}),"
                                f" {first['path']} on {first['data']['dataset']} (test {first['data']['test_domains']});"
                                " pass --data to compare them on the same samples")
        if c["arch"] != first["arch"]:
            raise FlatlensError(f"{c['path']} is a {c['arch']['name']}, {first['path']} a {first['arch']['name']} with "
                                "other settings; pass --data to compare them anyway")


def compare(ckpts: list[dict], metrics: list[str], splits: list[str], s: Settings, *, cache: ResultCache,
            device="cpu", data_file: str | None = None, progress=False) -> dict:
    if len(ckpts) < 1:
        raise FlatlensError("compare needs at least one checkpoint")
    if data_file is None:
        check_compatible(ckpts)
    for m in metrics:
        if m not in METRICS:
            raise FlatlensError(f"unknown metric {m!r}; choose from {', '.join(METRICS)} or all")
    table = []
    measurements = []
    for split in splits:
        data = load_data_file(data_file) if data_file else select_data(ckpts[0]["data"], split, s.samples, s.seed)
        for metric in metrics:
            results = [measure(c, metric, split, s, cache=cache, device=device, data=data, progress=progress)
                       for c in ckpts]
            measurements += results
            for j, row0 in enumerate(results[0]["rows"]):
                for i, (c, res) in enumerate(zip(ckpts, results)):
                    row = res["rows"][j]
                    entry = {"split": data[2]["split"], "metric": metric, "label": row["label"],
                             "checkpoint": c["path"], "weights": res["weights"], "value": row["value"],
                             "stderr": row["stderr"], "ci95": row["ci95"], "n": row["n"], "cached": res["cached"]}
                    if i > 0:
                        entry.update({f"vs_first_{k}": v for k, v in difference(row0, row).items()})
                    table.append(entry)
    return {"table": table, "measurements": measurements, "settings": s.__dict__,
            "checkpoints": [{"path": c["path"], "sha256": c["sha256"], "arch": c["arch"], "quant_bits":
                             (c["quant"] or {}).get("bits"), "data": c["data"]} for c in ckpts],
            "bn": "eval", "versions": versions(), "cache": cache.stats()}


def _fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    return f"{v:.4g}" if (a >= 1e-3 or a == 0) else f"{v:.3e}"


def format_table(report: dict) -> str:
    lines = []
    header = f"{'split':6} {'measure':44} {'checkpoint':28} {'value +- 95% CI':26} {'n':>5}  {'vs first (95% CI)':30} verdict"
    lines.append(header)
    lines.append("-" * len(header))
    for r in report["table"]:
        ci = r["ci95"]
        half = f" +- {_fmt((ci[1] - ci[0]) / 2)}" if ci else ""
        vs = ""
        verdict = "(reference)"
        if "vs_first_diff" in r:
            dci = r["vs_first_ci95"]
            vs = f"{_fmt(r['vs_first_diff'])}" + (f" [{_fmt(dci[0])}, {_fmt(dci[1])}]" if dci else "")
            verdict = r["vs_first_verdict"]
        name = r["checkpoint"].split("/")[-1][:28]
        lines.append(f"{r['split']:6} {r['label'][:44]:44} {name:28} {(_fmt(r['value']) + half):26} "
                     f"{str(r['n'] or '-'):>5}  {vs:30} {verdict}")
    weights = sorted({f"{r['checkpoint'].split('/')[-1]}: {r['weights']}" for r in report["table"]})
    lines.append("")
    lines.append("measured at: " + "; ".join(weights) + f". BN policy: {report['bn']}.")
    return "\n".join(lines)


def write_outputs(report: dict, *, json_path=None, csv_path=None) -> None:
    if json_path:
        atomic_write_text(json_path, json.dumps(report, indent=1, default=str) + "\n")
    if csv_path:
        buf = io.StringIO()
        cols = ["split", "metric", "label", "checkpoint", "weights", "value", "stderr", "ci_low", "ci_high", "n",
                "vs_first_diff", "vs_first_ci_low", "vs_first_ci_high", "vs_first_verdict"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in report["table"]:
            ci, dci = r["ci95"] or [None, None], r.get("vs_first_ci95") or [None, None]
            w.writerow({"split": r["split"], "metric": r["metric"], "label": r["label"],
                        "checkpoint": r["checkpoint"], "weights": r["weights"], "value": r["value"],
                        "stderr": r["stderr"], "ci_low": ci[0], "ci_high": ci[1], "n": r["n"],
                        "vs_first_diff": r.get("vs_first_diff"), "vs_first_ci_low": dci[0],
                        "vs_first_ci_high": dci[1], "vs_first_verdict": r.get("vs_first_verdict", "reference")})
        atomic_write_text(csv_path, buf.getvalue())
