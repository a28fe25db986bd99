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


def test_the_domain_samples_are_the_first_figure_and_the_per_domain_accuracies_are_shown():
    """Figure 10 (one image per class of every domain) is the first image a reader meets; figure 11 (every
    configuration's accuracy on every domain) is shown too; every image the README shows exists."""
    text = open(README, encoding="utf-8").read()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images[0] == "figures/fig10_domain_samples.png", images[:3]
    assert "figures/fig11_domain_accuracy.png" in images
    assert [p for p in images if not os.path.isfile(os.path.join(ROOT, p))] == []


def test_the_reference_report_is_generated_from_the_reference_run_and_names_the_data_figures():
    from flatlens.report import write_report
    from flatlens.reproduce import load_run
    text = write_report(load_run(os.path.join(ROOT, "figures")))
    assert text == open(os.path.join(ROOT, "figures", "report.md"), encoding="utf-8").read()
    assert "`fig10_domain_samples.png`" in text and "`fig11_domain_accuracy.png`" in text
