"""PositionalEncoding and FourierFeatures: they keep equivariance in the permuted (hidden)
neurons exactly (float64, 1e-12) on random spaces with ties, positional encodings make NP
layers tell input/output neurons apart, and their values, shapes and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import (
    equivariance_pair,
    host_permutation,
    max_abs,
    max_difference,
    random_features,
    weight_spaces,
)

import nfn


class Encoded(eqx.Module):
    """An encoding followed by a layer (the way the encodings are used)."""

    encoding: eqx.Module
    layer: eqx.Module

    def __call__(self, x):
        return self.layer(self.encoding(x))


@settings(max_examples=10)
@given(
    weight_spaces(max_leaves=4, max_terms=60, dtype=np.float64),
    st.sampled_from(["sinusoidal", "learned", "fourier"]),
    st.integers(1, 2),
    st.integers(0, 2**30),
)
def test_encodings_keep_equivariance_in_float64(drawn, kind, channels, seed):
    params, spec = drawn
    with jax.enable_x64(True):
        space = nfn.WeightSpace.from_spec(params, spec)
        key = jax.random.key(seed)
        if kind == "fourier":
            encoding = nfn.FourierFeatures(channels, 3, dtype=jnp.float64, key=key)
            width = encoding.out_channels
        else:
            encoding = nfn.PositionalEncoding(space, 2, kind=kind, dtype=jnp.float64, key=key)
            width = channels + encoding.extra_channels
        x = jax.tree.map(jnp.asarray, random_features(params, channels, seed, np.float64))
        perm = host_permutation(space.sizes, seed)
        # The encoding alone, then followed by an equivariant layer: both equivariant.
        y, y_g = equivariance_pair(encoding, space, space, x, perm)
        for leaf, v in zip(space, space.flatten(y, channels=True)):
            assert v.shape == (*leaf.shape, width)
        assert max_difference(y, y_g) <= 1e-12 * max(1.0, max_abs(y))
        layer = nfn.EquivariantLinear(space, width, 2, dtype=jnp.float64, key=key)
        y, y_g = equivariance_pair(Encoded(encoding, layer), space, space, x, perm)
        assert max_abs(y) > 0
        assert max_difference(y, y_g) <= 1e-12 * max_abs(y)


def test_positions_make_np_layers_see_io_identity():
    """NP layers after a positional encoding of the HNP space: equivariant to the hidden
    neurons' permutations, no longer to permutations of the inputs and outputs."""
    mlp = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0))
    hnp, np_space = nfn.weight_space(mlp), nfn.weight_space(mlp, io="permuted")
    # The two spaces number their ids independently: match them axis by axis.
    as_hnp = {g: h for a, b in zip(np_space, hnp) for g, h in zip(a.axes, b.axes) if g is not None}
    io_ids = [g for g, h in as_hnp.items() if h is None]
    assert len(io_ids) == 2 and len(as_hnp) == 4
    x = nfn.to_features(eqx.filter(mlp, eqx.is_array))
    with jax.enable_x64(True):
        x = jax.tree.map(lambda v: v.astype(jnp.float64), x)
        for kind in ("sinusoidal", "learned"):
            encoding = nfn.PositionalEncoding(
                hnp, 4, kind=kind, max_period=10.0, dtype=jnp.float64, key=jax.random.key(1)
            )
            assert encoding.slots == 1 and encoding.extra_channels == 4
            layer = nfn.EquivariantLinear(np_space, 5, 2, dtype=jnp.float64, key=jax.random.key(2))
            model = Encoded(encoding, layer)
            drawn = host_permutation(hnp.sizes, seed=3)
            hidden = {
                g: jnp.arange(np_space.sizes[g]) if h is None else drawn[h]
                for g, h in as_hnp.items()
            }
            y, y_g = equivariance_pair(model, np_space, np_space, x, hidden)
            assert max_difference(y, y_g) <= 1e-12 * max_abs(y)
            # Reversing the inputs and outputs: the NP layer alone does not notice, with the
            # encoding it does.
            io = {
                **nfn.identity_permutation(np_space),
                **{g: jnp.arange(np_space.sizes[g])[::-1] for g in io_ids},
            }
            y, y_g = equivariance_pair(model, np_space, np_space, x, io)
            assert max_difference(y, y_g) > 1e-2 * max_abs(y)
            plain = nfn.EquivariantLinear(np_space, 1, 2, dtype=jnp.float64, key=jax.random.key(2))
            y, y_g = equivariance_pair(plain, np_space, np_space, x, io)
            assert max_difference(y, y_g) <= 1e-12 * max_abs(y)


def test_positional_values_and_layout():
    params = {"w": np.zeros((3, 4, 2)), "b": np.zeros((3,)), "k": np.zeros((5,))}
    space = nfn.WeightSpace.from_spec(params, {"w": (0, None, None), "b": (0,), "k": (None,)})
    encoding = nfn.PositionalEncoding(space, 2, max_period=100.0)
    assert encoding.slots == 2 and encoding.extra_channels == 4
    x = jax.tree.map(lambda v: jnp.ones((*v.shape, 1)), params)
    y = encoding(x)
    assert y["w"].shape == (3, 4, 2, 5) and y["b"].shape == (3, 5) and y["k"].shape == (5, 5)
    table4 = nfn.sinusoidal_table(4, 2, 100.0)
    np.testing.assert_allclose(table4[:, 0], np.sin(np.arange(4)), rtol=1e-12)
    np.testing.assert_allclose(table4[:, 1], np.cos(np.arange(4)), rtol=1e-12)
    # w: slot 0 encodes the axis of size 4 (broadcast over the rest), slot 1 the axis of size 2.
    np.testing.assert_allclose(y["w"][1, :, 0, 1:3], table4, rtol=1e-6)
    np.testing.assert_allclose(y["w"][2, 3, :, 3:5], nfn.sinusoidal_table(2, 2, 100.0), rtol=1e-6)
    # b has no fixed axis: zeros; k has one: slot 1 is zero padding.
    np.testing.assert_array_equal(y["b"][..., 1:], 0.0)
    np.testing.assert_array_equal(y["k"][..., 3:], 0.0)
    np.testing.assert_array_equal(y["w"][..., 0], 1.0)


def test_learned_tables_train_and_move_to_other_widths():
    small = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0)))
    wide = nfn.weight_space(eqx.nn.MLP(3, 2, 7, 2, key=jax.random.key(0)))
    encoding = nfn.PositionalEncoding(small, 3, kind="learned", key=jax.random.key(1))
    assert len(encoding.tables) == 3  # inputs of the first weight, outputs of the last two
    moved = encoding.with_space(wide)
    assert moved.space == wide
    assert max_difference(moved.tables, encoding.tables) == 0

    def loss(enc, features):
        return sum(jnp.sum(v**2) for v in jax.tree.leaves(enc(features)))

    params = eqx.filter(eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(2)), eqx.is_array)
    grads = eqx.filter_grad(loss)(encoding, nfn.to_features(params))
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in grads.tables)


def test_fourier_features_values_and_frozen_matrix():
    fourier = nfn.FourierFeatures(2, 3, scale=0.5, key=jax.random.key(0))
    assert fourier.out_channels == 8
    x = {"a": jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)), jnp.float32)}
    y = fourier(x)["a"]
    angles = 2 * np.pi * np.asarray(x["a"]) @ np.asarray(fourier.matrix)
    np.testing.assert_allclose(y[:, :2], x["a"], rtol=1e-6)
    np.testing.assert_allclose(y[:, 2:5], np.sin(angles), atol=1e-5)
    np.testing.assert_allclose(y[:, 5:], np.cos(angles), atol=1e-5)

    def loss(f):
        return jnp.sum(f(x)["a"])  # (a sum of squares of sin and cos would be constant)

    assert float(jnp.max(jnp.abs(eqx.filter_grad(loss)(fourier).matrix))) == 0
    learned = nfn.FourierFeatures(2, 3, learned=True, keep_input=False, key=jax.random.key(0))
    assert learned.out_channels == 6
    assert float(jnp.max(jnp.abs(eqx.filter_grad(loss)(learned).matrix))) > 0


def test_encoding_errors_name_the_field():
    space = nfn.WeightSpace.from_spec({"w": np.zeros((3, 2))}, {"w": (0, None)})
    with pytest.raises(ValueError, match="even size"):
        nfn.PositionalEncoding(space, 3)
    with pytest.raises(ValueError, match="kind"):
        nfn.PositionalEncoding(space, 2, kind="rotary")
    with pytest.raises(ValueError, match="key"):
        nfn.PositionalEncoding(space, 2, kind="learned")
    with pytest.raises(ValueError, match="frequencies"):
        nfn.FourierFeatures(1, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\['w'\].*2 channels"):
        nfn.FourierFeatures(2, 1, key=jax.random.key(0))({"w": jnp.zeros((3, 2, 1))})
