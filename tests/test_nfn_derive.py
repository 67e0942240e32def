"""Deriving weight spaces from Equinox models: activations of `eqx.nn.MLP`, shared arrays, and
more layer types; each derived symmetry is checked against the model (function preservation)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nfn

KEY = jax.random.key(0)


def raises_naming(*fragments):
    return pytest.raises(
        ValueError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    )


def spec_of(space):
    return {leaf.path: leaf.axes for leaf in space}


def host_permutation(space, seed):
    rng = np.random.default_rng(seed)
    return {g: jnp.asarray(rng.permutation(n)) for g, n in space.sizes.items()}


def host_normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed + 1).standard_normal(shape), jnp.float32)


def permuted_model(model, space, perm):
    params, static = eqx.partition(model, eqx.is_array)
    return eqx.combine(nfn.permute(space, params, perm), static)


@eqx.filter_jit
def _original_and_permuted(model, space, perm, x):
    return jax.vmap(model)(x), jax.vmap(permuted_model(model, space, perm))(x)


def assert_close_scaled(a, b, rel=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(a))))
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


# --------------------------------------------------------------------------- MLP activations


def _scale_by_position(x):
    # Not permutation-equivariant on a vector: entry i is scaled by i.
    return x * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)


@pytest.mark.parametrize("io", ["fixed", "permuted"])
def test_mlp_with_position_dependent_activation_is_a_barrier(io):
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=_scale_by_position, key=KEY)
    space = nfn.weight_space(mlp, io=io)
    hidden = [leaf.axes for leaf in space if leaf.path.startswith(".layers[1]")]
    assert all(a is None for axes in hidden for a in axes)
    assert all(leaf.axes[0] is None for leaf in space if leaf.path.startswith(".layers[0]"))


def test_mlp_with_position_dependent_final_activation_fixes_outputs():
    mlp = eqx.nn.MLP(3, 2, 4, 1, final_activation=_scale_by_position, key=KEY)
    space = nfn.weight_space(mlp, io="permuted")
    assert spec_of(space)[".layers[1].weight"][0] is None
    assert spec_of(space)[".layers[1].bias"] == (None,)
    # The hidden neurons are untouched by the final activation.
    assert spec_of(space)[".layers[1].weight"][1] is not None


def _centre(x):
    # Mixes entries (subtracts their mean) but commutes with permuting them.
    return x - jnp.mean(x)


def test_mlp_with_equivariant_non_elementwise_activation_keeps_symmetry():
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=_centre, key=KEY)
    space = nfn.weight_space(mlp)
    assert space.sizes == {0: 4, 1: 4}


@settings(max_examples=4, deadline=None)
@given(st.sampled_from([jax.nn.relu, _centre, _scale_by_position]), st.integers(0, 2**30))
def test_mlp_activation_symmetry_preserves_function(activation, seed):
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=activation, final_activation=activation, key=KEY)
    for io in ("fixed", "permuted"):
        space = nfn.weight_space(mlp, io=io)
        perm, x = host_permutation(space, seed), host_normal(seed, (5, 3))
        if io == "permuted":
            # Only hidden ids may keep the function; the boundary ids are the network's I/O.
            boundary = {space.leaves[0].axes[1], space.leaves[-1].axes[0]} - {None}
            perm = {g: (jnp.arange(len(p)) if g in boundary else p) for g, p in perm.items()}
        assert_close_scaled(*_original_and_permuted(mlp, space, perm, x))


def test_mlp_with_learned_activation_one_hidden_layer():
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=eqx.nn.PReLU(), key=KEY)
    space = nfn.weight_space(mlp)
    spec = spec_of(space)
    assert spec[".activation.negative_slope"] == (None, 0)
    perm = {0: jnp.asarray([2, 0, 3, 1])}
    params, static = eqx.partition(mlp, eqx.is_array)
    # Make the per-neuron slopes differ, so a wrong action would show.
    params = eqx.tree_at(
        lambda p: p.activation.negative_slope, params, jnp.asarray([[0.1, 0.5, 0.9, 0.3]])
    )
    mlp = eqx.combine(params, static)
    assert_close_scaled(*_original_and_permuted(mlp, space, perm, host_normal(0, (5, 3)) * 3))


def test_mlp_with_learned_activation_deep_fixes_hidden_neurons():
    mlp = eqx.nn.MLP(3, 2, 4, 2, activation=eqx.nn.PReLU(), key=KEY)
    space = nfn.weight_space(mlp)
    assert space.sizes == {}
    assert spec_of(space)[".activation.negative_slope"] == (None, None)


# --------------------------------------------------------------------------- shared arrays


def test_shared_array_is_rejected_naming_both_leaves():
    lin = eqx.nn.Linear(4, 4, key=KEY)
    model = eqx.nn.Sequential([lin, eqx.nn.Lambda(jax.nn.relu), lin])
    with raises_naming(".layers[0].weight", ".layers[2].weight", "same array"):
        nfn.weight_space(model)


def test_scan_mlp_is_rejected_clearly():
    mlp = eqx.nn.MLP(3, 2, 4, 3, scan=True, key=KEY)
    with raises_naming("scan=True", "MLP", "WeightSpace.from_spec"):
        nfn.weight_space(mlp)
