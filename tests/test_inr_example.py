"""`--quick` run of the INR classification example, as a user would run it: every row, and the
ordering of the full run (a weight-space model well above the flat MLP)."""

import re

from example_runner import run_example

MODELS = (
    "flat MLP",
    "flat MLP + aug",
    "statistics",
    "UNF NP",
    "UNF HNP",
    "UNF HNP + attention",
    "UNF HNP + canon",
    "UNF HNP + probes + aug",
)
REFERENCES = ("pixels MLP (not weights)", "probe outputs MLP (64 values, not weights)")


def test_inr_classification_quick():
    out = run_example("inr_classification.py", "--quick")
    assert "fitted 300 SIRENs (28x28, width 32, omega0 30, independent init)" in out
    for model in (*MODELS, *REFERENCES):
        rows = [line for line in out.splitlines() if line.startswith(f"| {model} |")]
        assert len(rows) == 1 and len(rows[0].split("|")) == 8, out
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"best: (.+) accuracy (\d\.\d{3}); flat MLP (\d\.\d{3})", last)
    assert match and match.group(1) in MODELS, last
    best, flat = float(match.group(2)), float(match.group(3))
    assert match.group(1) != "flat MLP" and best >= flat + 0.1, last
