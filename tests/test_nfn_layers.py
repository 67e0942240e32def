"""Layer structure: the derived plan is static data of the layer, and the ready-made models'
options (normalisation, dropout, heads, moving to other hidden widths)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import host_permutation, max_difference

import nfn

KEY = jax.random.key(0)


def mlp_space(width=5, depth=2, io="permuted"):
    return nfn.weight_space(eqx.nn.MLP(3, 2, width, depth, key=KEY), io=io)


def test_equivariant_plan_is_static_data_of_the_layer():
    space = mlp_space()
    a = nfn.EquivariantLinear(space, 2, 3, key=jax.random.key(1))
    b = nfn.EquivariantLinear(space, 2, 3, key=jax.random.key(2))
    assert a.plan == b.plan and hash(a.plan) == hash(b.plan)
    assert len(a.plan.matmuls) == len(a.coupled_weights)
    assert sorted(b for buckets in a.plan.matmuls for b in buckets) == list(
        range(len(a.plan.output_buckets))
    )
    assert sorted(k for bucket in a.plan.output_buckets for k in bucket) == list(
        range(len(a.terms))
    )
    # Equal plans are equal static metadata: a jitted call compiles once for both layers.
    traces = []

    @eqx.filter_jit
    def apply(layer, x):
        traces.append(None)
        return layer(x)

    x = nfn.to_features(
        jax.tree.map(jnp.ones_like, eqx.filter(eqx.nn.MLP(3, 2, 5, 2, key=KEY), eqx.is_array))
    )
    x = jax.tree.map(lambda v: jnp.concatenate([v, v], -1), x)
    np.testing.assert_array_equal(jax.tree.leaves(apply(a, x))[0], jax.tree.leaves(a(x))[0])
    apply(b, x)
    assert len(traces) == 1


# --------------------------------------------------------------------------- moving to other widths


def mlp_params(width, depth=2, seed=0):
    return eqx.filter(eqx.nn.MLP(3, 2, width, depth, key=jax.random.key(seed)), eqx.is_array)


@eqx.filter_jit
def _encode_pair(encoder, network, space, f, perm):
    fp = nfn.permute(space, f, perm, channels=True)
    out, out_p = network(f), network(fp)
    return encoder(f), encoder(fp), nfn.permute(space, out, perm, channels=True), out_p


@settings(max_examples=4, deadline=None)
@given(st.integers(1, 9), st.sampled_from(["fixed", "permuted"]), st.integers(0, 2**30))
def test_models_moved_to_other_widths_stay_invariant_and_equivariant(width, io, seed):
    small = mlp_space(4, io=io)
    encoder = nfn.InvariantEncoder(small, 3, depth=2, hidden_channels=4, key=jax.random.key(1))
    network = nfn.EquivariantNetwork(small, 1, 4, 2, 2, key=jax.random.key(2))
    space = mlp_space(width, io=io)
    moved_encoder, moved_network = encoder.with_space(space), network.with_space(space)
    # Same parameters, new space.
    assert jax.tree.leaves(eqx.filter(moved_encoder, eqx.is_array)) == jax.tree.leaves(
        eqx.filter(encoder, eqx.is_array)
    )
    assert moved_encoder.invariant.space == space
    f = nfn.to_features(mlp_params(width, seed=seed % 100))
    z, z_p, y_p, out_p = _encode_pair(
        moved_encoder, moved_network, space, f, host_permutation(space.sizes, seed)
    )
    assert z.shape == (3,)
    assert max_difference(z, z_p) < 1e-4 * max(1.0, float(jnp.max(jnp.abs(z))))
    scale = max(1.0, max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(y_p)))
    assert max_difference(y_p, out_p) < 1e-4 * scale


def test_moving_back_restores_the_layer_exactly():
    small, wide = mlp_space(4), mlp_space(7)
    layer = nfn.EquivariantLinear(small, 1, 2, key=jax.random.key(1))
    back = layer.with_space(wide).with_space(small)
    f = nfn.to_features(mlp_params(4))
    assert max_difference(layer(f), back(f)) == 0.0
    invariant = nfn.InvariantLinear(small, 1, 3, use_bias=False, key=jax.random.key(1))
    assert max_difference(invariant(f), invariant.with_space(wide).with_space(small)(f)) == 0.0


def test_moving_to_an_incompatible_space_names_the_leaf():
    layer = nfn.EquivariantLinear(mlp_space(4), 1, 2, key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"\.layers\[0\]\.weight: fixed axis|axes"):
        layer.with_space(nfn.weight_space(eqx.nn.MLP(5, 2, 4, 2, key=KEY)))
    with pytest.raises(ValueError, match="3 leaves|leaves"):
        layer.with_space(mlp_space(4, depth=1))
    fixed = nfn.EquivariantLinear(mlp_space(4, io="fixed"), 1, 2, key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"\.layers\[0\]\.weight: fixed axis 1 has size 5"):
        fixed.with_space(nfn.weight_space(eqx.nn.MLP(5, 2, 4, 2, key=KEY)))


# --------------------------------------------------------------------------- model options


def test_layer_norm_removes_the_global_scale_and_none_keeps_it():
    space = mlp_space(4)
    f = nfn.to_features(mlp_params(4))
    f3 = jax.tree.map(lambda x: 3 * x, f)
    for norm, scale_blind in (("layer", True), (None, False)):
        encoder = nfn.InvariantEncoder(space, 3, norm=norm, key=jax.random.key(1))
        network = nfn.EquivariantNetwork(space, 1, 4, 2, 2, norm=norm, key=jax.random.key(2))
        assert (encoder.norms is not None) == scale_blind
        enc_diff = float(jnp.max(jnp.abs(encoder(f) - encoder(f3))))
        # The last equivariant layer is linear: compare its input through the output's scale.
        net_diff = max_difference(network(f3), jax.tree.map(lambda x: 3 * x, network(f)))
        if scale_blind:
            assert enc_diff < 1e-4
        else:
            assert enc_diff > 1e-3 and net_diff < 1e-4
    # The runtime type checker of the test suite rejects it first; without one, a ValueError.
    with pytest.raises((ValueError, TypeError), match="norm"):
        nfn.InvariantEncoder(space, 3, norm="batch", key=KEY)


def test_dropout_needs_a_key_and_respects_inference():
    space = mlp_space(4)
    f = nfn.to_features(mlp_params(4))
    plain = nfn.InvariantEncoder(space, 3, key=jax.random.key(1))
    encoder = nfn.InvariantEncoder(space, 3, dropout=0.5, key=jax.random.key(1))
    network = nfn.EquivariantNetwork(space, 1, 4, 2, 3, dropout=0.5, key=jax.random.key(2))
    with pytest.raises(ValueError, match="key"):
        encoder(f)
    with pytest.raises(ValueError, match="key"):
        network(f)
    # Inference (at call time or built in) is the model without dropout.
    np.testing.assert_array_equal(encoder(f, inference=True), plain(f))
    built = nfn.InvariantEncoder(space, 3, dropout=0.5, inference=True, key=jax.random.key(1))
    np.testing.assert_array_equal(built(f), plain(f))
    a, b = encoder(f, key=jax.random.key(3)), encoder(f, key=jax.random.key(4))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    np.testing.assert_array_equal(a, encoder(f, key=jax.random.key(3)))
    assert max_difference(network(f, key=jax.random.key(3)), network(f, inference=True)) > 1e-4
    with pytest.raises(ValueError, match="dropout"):
        nfn.EquivariantNetwork(space, 1, 4, 2, 2, dropout=1.0, key=KEY)


def test_head_sizes_may_differ():
    space = mlp_space(4)
    f = nfn.to_features(mlp_params(4))
    encoder = nfn.InvariantEncoder(space, "scalar", head_sizes=(16, 8, 4), key=jax.random.key(1))
    assert [layer.weight.shape for layer in encoder.head] == [(16, 64), (8, 16), (4, 8), (1, 4)]
    assert encoder(f).shape == ()
    assert nfn.InvariantEncoder(space, 2, head_sizes=(), key=KEY)(f).shape == (2,)
    with pytest.raises(ValueError, match="head_sizes"):
        nfn.InvariantEncoder(space, 2, head_sizes=(8, 0), key=KEY)


def test_layers_survive_pickling():
    # (Models holding `jax.nn.relu` do not pickle: JAX's wrapped functions do not, in any module.)
    import pickle

    space = nfn.weight_space(eqx.nn.MLP(3, 2, 4, 2, key=KEY))
    f = nfn.to_features(mlp_params(4))
    for layer in (
        nfn.EquivariantLinear(space, 1, 2, key=jax.random.key(1)),
        nfn.InvariantLinear(space, 1, 3, key=jax.random.key(1)),
    ):
        again = pickle.loads(pickle.dumps(layer))
        assert jax.tree.structure(again) == jax.tree.structure(layer)
        assert max_difference(layer(f), again(f)) == 0.0
