"""`EquivariantLinear` computes the same function as the straightforward per-term formula.

`benchmarks/_naive_unf.py` writes every basis map as its own op chain (diagonal extraction, mean,
channel mix, broadcast, diagonal write with delta tensors), taking an nfn layer's parameters.
nfn pools, groups and stacks those terms; this checks, on random spaces with ties of 2 and 3
axes, fixed axes and scalar leaves, that doing so changes nothing. It also keeps the benchmark's
baseline honest.
"""

import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import random_features, weight_spaces

import nfn

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
from _naive_unf import NaiveEquivariantLinear, num_parameters  # noqa: E402


@settings(max_examples=8)
@given(
    weight_spaces(max_leaves=4, max_terms=60),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2**30),
)
def test_equals_per_term_formula(drawn, c_in, c_out, seed):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    key, bias_key = jax.random.split(jax.random.key(seed))
    layer = nfn.EquivariantLinear(space, c_in, c_out, key=key)
    # A nonzero bias, so the bias terms are compared too.
    layer = eqx.tree_at(lambda m: m.bias, layer, jax.random.normal(bias_key, layer.bias.shape))
    naive = NaiveEquivariantLinear.from_nfn(layer)
    assert naive.num_terms == nfn.count_equivariant_terms(space)
    assert num_parameters(naive) == num_parameters(layer)

    x = jax.tree.map(jnp.asarray, random_features(params, c_in, seed))
    expected = eqx.filter_jit(naive)(x)
    actual = eqx.filter_jit(layer)(x)
    for name in params:
        scale = float(jnp.max(jnp.abs(expected[name]))) + 1e-6
        np.testing.assert_allclose(actual[name], expected[name], atol=2e-5 * scale, rtol=0)
