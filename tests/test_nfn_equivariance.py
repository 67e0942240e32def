"""Equivariance of the UNF layers and models under independent random permutations of every id,
their sensitivity to actions that are not symmetries, jit/vmap consistency and init scale."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import (
    equivariance_pair,
    features_of,
    host_permutation,
    max_abs,
    max_difference,
    random_features,
    space_of,
    weight_spaces,
)

import nfn


def assert_trees_close(a, b, rel):
    """|a - b| <= rel * max|a| (tolerance relative to the output scale)."""
    scale = max_abs(a)
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=rel * scale)


def _first(tree, k):
    return jax.tree.map(lambda v: v[k], tree)


@eqx.filter_jit
def _pair_of_pairs(layer, invariant, space, x, perm):
    return (
        equivariance_pair(layer, space, space, x, perm),
        equivariance_pair(invariant, space, None, x, perm),
    )


def check_equivariant(layer, space, x, perm, out_space=None, rel=1e-5):
    y_then_g, g_then_y = equivariance_pair(layer, space, out_space or space, x, perm)
    assert max_abs(y_then_g) > 0
    assert_trees_close(y_then_g, g_then_y, rel)


def check_invariant(model, space, x, perm, rel=1e-5):
    y, y_g = equivariance_pair(model, space, None, x, perm)
    assert max_abs(y) > 0
    assert_trees_close(y, y_g, rel)


# --------------------------------------------------------------------------- random spaces


@settings(max_examples=5)
@given(weight_spaces(), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**30))
def test_equivariant_linear_on_random_spaces(drawn, c_in, c_out, seed):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    layer = nfn.EquivariantLinear(space, c_in, c_out, key=jax.random.key(seed))
    # A nonzero bias, so the bias's equivariance is checked too.
    layer = eqx.tree_at(
        lambda m: m.bias,
        layer,
        jnp.asarray(
            np.random.default_rng(seed).standard_normal(layer.bias.shape), layer.bias.dtype
        ),
    )
    x = jax.tree.map(jnp.asarray, random_features(params, c_in, seed))
    check_equivariant(layer, space, x, host_permutation(space.sizes, seed))


@settings(max_examples=5)
@given(weight_spaces(), st.integers(1, 3), st.integers(0, 2**30))
def test_invariant_linear_on_random_spaces(drawn, c_in, seed):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    layer = nfn.InvariantLinear(space, c_in, 4, key=jax.random.key(seed))
    x = jax.tree.map(jnp.asarray, random_features(params, c_in, seed))
    check_invariant(layer, space, x, host_permutation(space.sizes, seed))


# --------------------------------------------------------------------------- hand-made spaces

CASES = {
    # a tie of 2 axes, a scalar leaf, fixed axes, an id shared across leaves
    "tie2": ({"h": (0, 0), "v": (0,), "s": (), "u": (1, 0, None)}, {0: 3, 1: 2}),
    # a tie of 3 axes (203 basis maps from the leaf to itself)
    "tie3": ({"t": (0, 0, 0), "v": (0,), "s": ()}, {0: 2}),
    # every permuted axis has width 1
    "width1": ({"a": (0, 1), "b": (1,), "c": (None, 0), "s": ()}, {0: 1, 1: 1}),
    # an MLP with equal adjacent widths, all neurons permuted (NP): ids must not be confused
    "equal_widths": (
        {"w0": (1, 0), "b0": (1,), "w1": (2, 1), "b1": (2,), "w2": (3, 2), "b2": (3,)},
        {0: 3, 1: 3, 2: 3, 3: 3},
    ),
    # ranks 4 to 6, repeated ids inside a leaf but not adjacent, fixed axes in between
    "high_rank": (
        {"r4": (0, 1, None, 0), "r5": (0, None, 1, None, 2), "r6": (2, 1, 2, None, None, 0)},
        {0: 2, 1: 2, 2: 2},
    ),
    # a leaf that is all fixed axes and leaves sharing no id
    "disjoint": ({"f": (None, None), "a": (0,), "b": (1, 1)}, {0: 4, 1: 3}),
}
# Spaces with many basis maps are checked on single layers only (models stack several layers).
MODEL_CASES = ("tie2", "width1", "equal_widths", "disjoint")


def output_std(tree):
    return float(np.std(np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])))


def _assert_equivariant_and_invariant(space, sizes, equivariant, invariant, *, seed: int):
    """`equivariant` commutes with a random hidden-neuron permutation of `space` and `invariant`
    ignores it (two-channel features drawn with `seed`, the permutation with `seed + 1`); both
    outputs are nonzero, and unit-variance inputs give equivariant outputs of order one."""
    x = features_of(space, 2, seed=seed)
    perm = host_permutation(sizes, seed=seed + 1)

    @eqx.filter_jit
    def run(equivariant, invariant, x, perm):
        return (
            equivariance_pair(equivariant, space, space, x, perm),
            equivariance_pair(invariant, space, None, x, perm),
        )

    equi, inv = run(equivariant, invariant, x, perm)
    for a, b in (equi, inv):
        assert max_abs(a) > 0
        assert_trees_close(a, b, 1e-5)
    assert 0.1 < output_std(equi[0]) < 10


@pytest.mark.parametrize("case", sorted(CASES))
def test_linear_layers_on_hand_made_spaces(case):
    spec, sizes = CASES[case]
    space = space_of(spec, sizes)
    keys = jax.random.split(jax.random.key(len(case)), 2)
    layer = nfn.EquivariantLinear(space, 2, 3, key=keys[0])
    invariant = nfn.InvariantLinear(space, 2, 5, key=keys[1])
    _assert_equivariant_and_invariant(space, sizes, layer, invariant, seed=1)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_models_on_hand_made_spaces(case):
    spec, sizes = CASES[case]
    space = space_of(spec, sizes)
    keys = jax.random.split(jax.random.key(len(case)), 2)
    network = nfn.EquivariantNetwork(space, 2, 4, 3, depth=2, key=keys[0])
    encoder = nfn.InvariantEncoder(
        space,
        3,
        in_channels=2,
        hidden_channels=4,
        depth=1,
        invariant_features=8,
        head_sizes=(8,),
        key=keys[1],
    )
    _assert_equivariant_and_invariant(space, sizes, network, encoder, seed=3)


def test_equivariant_linear_between_different_spaces():
    space = space_of({"a": (0, 1), "b": (1,), "c": (None, 0)}, {0: 3, 1: 2})
    out_space = space_of(
        {"p": (1, 2, None), "q": (2, 2), "r": (), "s": (0, 1, 0)}, {0: 3, 1: 2, 2: 4}, fixed=3
    )
    layer = nfn.EquivariantLinear(space, 2, 3, out_space=out_space, key=jax.random.key(0))
    x = features_of(space, 2, seed=3)
    perm = host_permutation({0: 3, 1: 2, 2: 4}, seed=4)
    check_equivariant(layer, space, x, perm, out_space=out_space)
    y = layer(x)
    assert [np.shape(v) for v in jax.tree.leaves(y)] == [(*leaf.shape, 3) for leaf in out_space]
    # Id 2 acts on the output only: permuting it alone must leave the output unchanged.
    only2 = {0: jnp.arange(3), 1: jnp.arange(2), 2: perm[2]}
    y_then_g, g_then_y = equivariance_pair(layer, space, out_space, x, only2)
    assert_trees_close(y_then_g, g_then_y, 1e-5)


def test_mismatched_shared_id_sizes_rejected():
    space = space_of({"a": (0, 1)}, {0: 3, 1: 2})
    out_space = space_of({"b": (1,)}, {1: 4})
    with pytest.raises(ValueError, match="id 1"):
        nfn.EquivariantLinear(space, 1, 1, out_space=out_space, key=jax.random.key(0))


def test_float64_equivariance_is_tight():
    spec, sizes = CASES["tie2"]
    with jax.enable_x64(True):
        space = space_of(spec, sizes)
        x = features_of(space, 2, seed=5, dtype=np.float64)
        perm = host_permutation(sizes, seed=6)
        layer = nfn.EquivariantLinear(space, 2, 2, dtype=jnp.float64, key=jax.random.key(1))
        layer = eqx.tree_at(lambda m: m.bias, layer, jnp.linspace(-1.0, 1.0, layer.bias.size))
        invariant = nfn.InvariantLinear(space, 2, 3, dtype=jnp.float64, key=jax.random.key(2))
        assert layer.pooled_weight.dtype == jnp.float64
        (a, b), (c, d) = _pair_of_pairs(layer, invariant, space, x, perm)
        assert all(v.dtype == jnp.float64 for v in jax.tree.leaves((a, b, c, d)))
        for y, y_g in ((a, b), (c, d)):
            assert max_abs(y) > 0
            assert_trees_close(y, y_g, 1e-12)


# --------------------------------------------------------------------------- sensitivity


def test_not_equivariant_to_an_action_breaking_a_coupling():
    """Permuting a bias with another permutation than its weight's rows is not a symmetry."""
    space = space_of({"w": (0, None), "b": (0,), "w2": (None, 0)}, {0: 4}, fixed=3)
    layer = nfn.EquivariantLinear(space, 1, 1, key=jax.random.key(3))
    x = features_of(space, 1, seed=7)
    # The same layer under the true action is equivariant (so the difference below is not noise).
    p = jnp.asarray([1, 2, 3, 0])
    check_equivariant(layer, space, x, {0: p})
    # A broken action: rows of w and w2's columns by p, but b by q != p.
    broken_space = space_of({"w": (0, None), "b": (1,), "w2": (None, 0)}, {0: 4, 1: 4}, fixed=3)
    broken = {0: p, 1: jnp.asarray([3, 2, 1, 0])}
    a, b = equivariance_pair(layer, broken_space, broken_space, x, broken)
    assert max_difference(a, b) > 1e-2 * max_abs(a)


# Each layer on a space, and whether it maps to that space (else it is invariant: no action moves
# its output).
FIXED_AXIS_CASES = {
    "equivariant": (lambda space: nfn.EquivariantLinear(space, 1, 1, key=jax.random.key(4)), True),
    "attention": (lambda space: nfn.EquivariantAttention(space, 1, 1, key=jax.random.key(4)), True),
    "invariant": (lambda space: nfn.InvariantLinear(space, 1, 3, key=jax.random.key(5)), False),
}


@pytest.mark.parametrize("case", sorted(FIXED_AXIS_CASES))
def test_not_equivariant_to_permuting_a_fixed_axis(case):
    make_layer, maps_to_space = FIXED_AXIS_CASES[case]
    space = space_of({"w": (0, None), "b": (0,)}, {0: 3}, fixed=4)
    layer = make_layer(space)
    x = features_of(space, 1, seed=8)
    # Pretend the fixed axis were permuted (id 1) and swap two of its entries, id 0 identity.
    as_permuted = space_of({"w": (0, 1), "b": (0,)}, {0: 3, 1: 4})
    action = {0: jnp.arange(3), 1: jnp.asarray([1, 0, 2, 3])}
    out_space = as_permuted if maps_to_space else None
    a, b = equivariance_pair(layer, as_permuted, out_space, x, action)
    assert max_difference(a, b) > 1e-2 * max_abs(a)


# --------------------------------------------------------------------------- jit / vmap


def test_jit_matches_eager_and_vmap_matches_single():
    space = space_of({"h": (0, 0), "b": (0,), "s": ()}, {0: 3})
    layer = nfn.EquivariantLinear(space, 2, 3, key=jax.random.key(6))
    invariant = nfn.InvariantLinear(space, 2, 3, key=jax.random.key(7))
    xs = [features_of(space, 2, seed=s) for s in range(3)]
    batch = nfn.stack(xs)

    @eqx.filter_jit
    def both(x):
        return layer(x), invariant(x)

    @eqx.filter_jit
    def batched(xb):
        return jax.vmap(layer)(xb), jax.vmap(invariant)(xb)

    eager = (layer(xs[0]), invariant(xs[0]))
    assert_trees_close(eager, both(xs[0]), 1e-6)
    singles = [both(x) for x in xs]
    for single, from_batch in zip(singles, nfn.unstack(batched(batch))):
        assert_trees_close(single, from_batch, 1e-6)
