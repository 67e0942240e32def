"""EquivariantAttention: exact equivariance (float64, 1e-12) on random spaces with ties, that
it really mixes neurons and reads ties' diagonals, its use as a block in the models, moving to
other widths, and its errors."""

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


def assert_equivariant(layer, space, x, perm, rel, out_space="same"):
    out_space = space if out_space == "same" else out_space
    y, y_g = equivariance_pair(layer, space, out_space, x, perm)
    scale = max_abs(y)
    assert scale > 0
    assert max_difference(y, y_g) <= rel * scale, (max_difference(y, y_g), scale)


# --------------------------------------------------------------------------- random spaces


@settings(max_examples=12)
@given(
    weight_spaces(max_leaves=5, dtype=np.float64),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2**30),
)
def test_attention_is_equivariant_in_float64(drawn, c_in, c_out, heads, seed):
    params, spec = drawn
    with jax.enable_x64(True):
        space = nfn.WeightSpace.from_spec(params, spec)
        layer = nfn.EquivariantAttention(
            space,
            c_in,
            c_out,
            heads=heads,
            head_size=3,
            dtype=jnp.float64,
            key=jax.random.key(seed),
        )
        x = jax.tree.map(jnp.asarray, random_features(params, c_in, seed, np.float64))
        if not space.ids:
            # Nothing is permuted: no tokens, the update is zero everywhere.
            assert max_abs(layer(x)) == 0
            return
        y, y_g = equivariance_pair(layer, space, space, x, host_permutation(space.sizes, seed))
        assert all(v.dtype == jnp.float64 for v in jax.tree.leaves((y, y_g)))
        for leaf, v in zip(space, space.flatten(y, channels=True)):
            assert v.shape == (*leaf.shape, c_out)
        # Leaves with a permuted axis get a nonzero update; equivariance to 1e-12 of the scale.
        assert max_abs(y) > 0
        assert max_difference(y, y_g) <= 1e-12 * max_abs(y)


# --------------------------------------------------------------------------- hand-made spaces

TIES = {"h": (0, 0), "v": (0,), "s": (), "u": (1, 0, None), "t": (0, 0, 0), "f": (None, None)}
TIE_SIZES = {0: 3, 1: 2}


def test_ties_and_high_rank_in_float64():
    spec = {"r4": (0, 1, None, 0), "r5": (0, None, 1, None, 2), "r6": (2, 1, 2, None, None, 0)}
    sizes = {0: 2, 1: 3, 2: 2}
    with jax.enable_x64(True):
        for s, z in ((TIES, TIE_SIZES), (spec, sizes)):
            space = space_of(s, z)
            layer = nfn.EquivariantAttention(
                space, 2, 3, heads=2, head_size=4, dtype=jnp.float64, key=jax.random.key(0)
            )
            x = features_of(space, 2, seed=1, dtype=np.float64)
            assert_equivariant(layer, space, x, host_permutation(z, seed=2), 1e-12)


def test_pieces_read_every_axis_and_the_diagonal_of_ties():
    space = space_of(TIES, TIE_SIZES)
    pieces = nfn.EquivariantAttention(space, 1, 1, key=jax.random.key(0)).pieces
    by_leaf = {}
    for piece in pieces:
        by_leaf.setdefault(space.leaves[piece.leaf].path, []).append(piece.positions)
    assert by_leaf["['h']"] == [(0,), (1,), (0, 1)]
    assert by_leaf["['t']"] == [(0,), (1,), (2,), (0, 1, 2)]
    assert by_leaf["['u']"] == [(0,), (1,)]
    assert "['s']" not in by_leaf and "['f']" not in by_leaf


def test_attention_mixes_neurons():
    """A neuron's output depends on another neuron's input (the layer is not pointwise)."""
    space = space_of({"w": (0, None), "b": (0,)}, {0: 4})
    layer = nfn.EquivariantAttention(space, 1, 1, heads=2, head_size=4, key=jax.random.key(1))
    x = features_of(space, 1, seed=3)

    def neuron0(b_of_neuron3):
        y = layer({"w": x["w"], "b": x["b"].at[3, 0].set(b_of_neuron3)})
        return y["b"][0, 0]

    assert abs(float(jax.jit(jax.grad(neuron0))(0.3))) > 1e-4


def test_not_equivariant_when_a_tie_is_broken():
    """On a tie (h, h), permuting rows and columns by different permutations is not a symmetry:
    the diagonal piece sees it."""
    with jax.enable_x64(True):
        space = space_of({"h": (0, 0)}, {0: 4})
        layer = nfn.EquivariantAttention(space, 1, 1, dtype=jnp.float64, key=jax.random.key(2))
        x = features_of(space, 1, seed=4, dtype=np.float64)
        p = jnp.asarray([1, 2, 3, 0])
        assert_equivariant(layer, space, x, {0: p}, 1e-12)
        untied = space_of({"h": (0, 1)}, {0: 4, 1: 4})
        broken = {0: p, 1: jnp.asarray([3, 2, 1, 0])}
        a, b = equivariance_pair(layer, untied, untied, x, broken)
        assert max_difference(a, b) > 1e-2 * max_abs(a)


def test_jit_and_vmap_match_eager():
    space = space_of({"h": (0, 0), "u": (1, 0, None)}, TIE_SIZES)
    layer = nfn.EquivariantAttention(space, 2, 2, heads=2, head_size=3, key=jax.random.key(5))
    xs = [features_of(space, 2, seed=s) for s in range(2)]
    batched = eqx.filter_jit(lambda m, xb: jax.vmap(m)(xb))(layer, nfn.stack(xs))
    for x, from_batch in zip(xs, nfn.unstack(batched)):
        assert max_difference(layer(x), from_batch) < 1e-5 * max(1.0, max_abs(from_batch))


def test_init_scale_is_of_order_one():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 16, 2, key=jax.random.key(0)))
    layer = nfn.EquivariantAttention(space, 4, 4, heads=2, head_size=8, key=jax.random.key(1))
    y = eqx.filter_jit(lambda m, x: m(x))(layer, features_of(space, 4, seed=0))
    std = float(np.std(np.concatenate([np.ravel(v) for v in jax.tree.leaves(y)])))
    assert 0.1 < std < 10


def test_errors_name_the_field():
    space = space_of({"w": (0, None)}, {0: 3})
    with pytest.raises(ValueError, match="heads"):
        nfn.EquivariantAttention(space, 1, 1, heads=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="head_size"):
        nfn.EquivariantAttention(space, 1, 1, head_size=0, key=jax.random.key(0))
    layer = nfn.EquivariantAttention(space, 2, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="channels"):
        layer(features_of(space, 3, seed=0))
    with pytest.raises(ValueError, match="attention_heads"):
        nfn.EquivariantNetwork(space, 1, 2, 1, 2, attention_heads=-1, key=jax.random.key(0))


# --------------------------------------------------------------------------- models


def test_models_with_attention_are_equivariant_and_invariant():
    spec = {"w0": (0, None), "b0": (0,), "h": (1, 1), "w1": (1, 0), "w2": (None, 1), "s": ()}
    sizes = {0: 4, 1: 3}
    with jax.enable_x64(True):
        space = space_of(spec, sizes)
        keys = jax.random.split(jax.random.key(0), 2)
        network = nfn.EquivariantNetwork(
            space, 2, 4, 3, depth=2, attention_heads=2, attention_head_size=3, key=keys[0]
        )
        encoder = nfn.InvariantEncoder(
            space, 3, in_channels=2, hidden_channels=4, depth=1, attention_heads=1, key=keys[1]
        )
        network, encoder = jax.tree.map(
            lambda v: v.astype(jnp.float64) if eqx.is_inexact_array(v) else v, (network, encoder)
        )
        assert len(network.attentions) == 1 and len(encoder.attentions) == 1
        x = features_of(space, 2, seed=1, dtype=np.float64)
        perm = host_permutation(sizes, seed=2)
        assert_equivariant(network, space, x, perm, 1e-12)
        assert_equivariant(encoder, space, x, perm, 1e-12, out_space=None)
        # The attention blocks are used: without them the outputs differ.
        plain = eqx.tree_at(lambda m: m.attentions, network, None, is_leaf=lambda v: v is None)
        with_attention, without = eqx.filter_jit(lambda a, b, x: (a(x), b(x)))(network, plain, x)
        assert max_difference(with_attention, without) > 1e-3


def test_models_without_attention_keep_their_initialisation():
    space = nfn.weight_space(eqx.nn.MLP(3, 2, 5, 2, key=jax.random.key(0)))
    key = jax.random.key(3)
    a = nfn.EquivariantNetwork(space, 1, 2, 1, 2, key=key)
    b = nfn.EquivariantNetwork(space, 1, 2, 1, 2, attention_heads=0, key=key)
    assert a.attentions is None
    assert max_difference(a.layers, b.layers) == 0


def test_attention_moves_to_other_widths():
    small = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0)))
    wide_model = eqx.nn.MLP(3, 2, 9, 2, key=jax.random.key(1))
    wide, wide_params = nfn.weight_space(wide_model), eqx.filter(wide_model, eqx.is_array)
    encoder = nfn.InvariantEncoder(small, 2, hidden_channels=4, attention_heads=2, key=KEY)
    moved = encoder.with_space(wide)
    assert moved.attentions[0].space == wide
    assert max_difference(eqx.filter(moved, eqx.is_array), eqx.filter(encoder, eqx.is_array)) == 0
    x = nfn.to_features(wide_params)
    perm = host_permutation(wide.sizes, seed=0)
    assert_equivariant(moved, wide, x, perm, 1e-4, out_space=None)


KEY = jax.random.key(7)


def test_tokens_by_hand():
    """Tokens of a tie (h, h) and a bias: row means, column means, the diagonal, the bias."""
    space = space_of({"b": (0,), "h": (0, 0)}, {0: 3})
    layer = nfn.EquivariantAttention(space, 1, 1, key=jax.random.key(0))
    x = features_of(space, 1, seed=0)
    h, b = np.asarray(x["h"][..., 0]), np.asarray(x["b"][..., 0])
    expected = np.stack([b, h.mean(1), h.mean(0), np.diag(h)], axis=1)
    np.testing.assert_allclose(layer.tokens(x)[0], expected, rtol=1e-6, atol=1e-6)
