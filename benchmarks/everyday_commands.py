"""What the everyday commands cost, end to end, as a new user runs them (whole processes, start-up included).

Trains (once, cached under benchmarks/.cache/) two checkpoints with `flatlens train`'s defaults (the digits CNN,
width 32, 1000 steps): full precision and 7-bit QAT. Then times, as subprocesses with no result cache,
  compare A B --metric hessian-trace      compare A B --metric all      hessian A --metric all
and, with --reproduce-dir DIR (a finished `flatlens reproduce --out DIR`), a fully cached rerun of it.
Each command runs --repeats times; the median is reported with min and max. Writes one JSON.
Usage: python benchmarks/everyday_commands.py [--repeats 3] [--reproduce-dir results/reproduce] [--json out.json]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")


def flatlens(*args):
    return [sys.executable, "-m", "flatlens", *args]


def checkpoints():
    os.makedirs(CACHE, exist_ok=True)
    out = {}
    for name, extra in (("fp32", []), ("q7", ["--bits", "7"])):
        path = os.path.join(CACHE, f"digits_{name}.pt")
        if not os.path.exists(path):
            subprocess.run(flatlens("train", "--test-domain", "75", *extra, "--out", path, "--quiet"), check=True)
        out[name] = path
    return out


def time_command(cmd, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-500:]}")
    shown = " ".join(os.path.relpath(c, os.path.dirname(HERE)) if os.path.isabs(c) else c for c in cmd[2:])
    return {"command": shown, "seconds_median": statistics.median(times), "seconds_min": min(times),
            "seconds_max": max(times), "repeats": repeats}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reproduce-dir", help="a finished `flatlens reproduce --out DIR`: time its cached rerun")
    p.add_argument("--json", default=os.path.join(HERE, "results", "everyday_commands_cpu.json"))
    a = p.parse_args()
    ck = checkpoints()
    rows = [time_command(flatlens("compare", ck["fp32"], ck["q7"], "--metric", "hessian-trace", "--no-cache",
                                  "--quiet"), a.repeats),
            time_command(flatlens("compare", ck["fp32"], ck["q7"], "--metric", "all", "--no-cache", "--quiet"),
                         a.repeats),
            time_command(flatlens("hessian", ck["fp32"], "--metric", "all", "--quiet"), a.repeats)]
    if a.reproduce_dir:
        rows.append(time_command(flatlens("reproduce", "--out", a.reproduce_dir, "--quiet"), a.repeats))
    for r in rows:
        print(f"{r['seconds_median']:8.1f} s (min {r['seconds_min']:.1f}, max {r['seconds_max']:.1f})  {r['command']}")
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows,
           "checkpoints": "flatlens train defaults: digits CNN width 32, 1000 steps, test domain 75; fp32 and 7 bit"}
    write_json(a.json, out)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
