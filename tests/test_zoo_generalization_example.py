"""`--quick` run of the CNN zoo generalisation example, as a user would run it."""

import re

from example_runner import run_example

MODELS = ("flat MLP", "flat MLP + aug", "statistics", "UNF NP", "UNF HNP")


def test_cnn_zoo_generalization_quick():
    out = run_example("cnn_zoo_generalization.py", "--quick")
    for model in MODELS:
        # One row per model in both tables, with a value for each of the three seeds.
        rows = [line for line in out.splitlines() if line.startswith(f"| {model} |")]
        assert len(rows) == 2, out
        assert len(rows[0].split("|")) == 8
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"best: (.+) tau (-?\d\.\d{3}); flat MLP (-?\d\.\d{3})", last)
    assert match and match.group(1) in MODELS, last
    assert -1 <= float(match.group(2)) <= 1
