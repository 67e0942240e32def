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


def test_attention_models_of_the_examples():
    """`--attention` compares each UNF encoder with the same encoder plus attention blocks."""
    import sys
    from pathlib import Path

    import equinox as eqx
    import jax

    import nfn

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import _weight_tasks as tasks

    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0))
    hnp, np_space = nfn.weight_space(mlp), nfn.weight_space(mlp, io="permuted")
    for kind in tasks.ATTENTION_MODELS:
        model = tasks.WeightModel(kind, hnp, np_space, "scalar", key=jax.random.key(1))
        attentions = model.body.attentions
        assert (attentions is not None) == kind.endswith("+ attention"), kind
        space = np_space if kind.startswith("UNF NP") else hnp
        assert model.body.invariant.space == space
        if attentions is not None:
            assert len(attentions) == 2 and attentions[0].heads == 2
