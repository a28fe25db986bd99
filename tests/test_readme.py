"""The README runs as written: its Python blocks execute, and its results block is what `flatlens report`
generates from the committed reference run (so no number in it is typed by hand)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _blocks(lang):
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```" + lang + r"\n(.*?)```", text, re.S)


@pytest.mark.parametrize("i", range(len(_blocks("python"))))
def test_python_block_runs_and_prints(i, tmp_path):
    code = _blocks("python")[i]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip(), "every README block prints what it shows"


def test_readme_results_block_is_generated_from_the_reference_run():
    from flatlens.report import README_END, README_START, readme_block
    from flatlens.reproduce import load_run
    text = open(README, encoding="utf-8").read()
    block = text[text.index(README_START) + len(README_START):text.index(README_END)].strip("\n")
    assert block == readme_block(load_run(os.path.join(ROOT, "figures")))
