"""ProbeFeatures: equivariance under every permutation of an MLP's weight space (float64), the
output channels are the MLP's outputs at the probes, the probes learn only when asked, and its
errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import host_permutation

import nfn

ACTIVATIONS = {"sin": jnp.sin, "relu": jax.nn.relu, "tanh": jnp.tanh}


def _mlp(in_size, out_size, width, depth, activation, seed):
    with jax.enable_x64(True):
        mlp = eqx.nn.MLP(
            in_size,
            out_size,
            width,
            depth,
            activation=ACTIVATIONS[activation],
            final_activation=jnp.tanh,
            key=jax.random.key(seed),
        )
        return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_array(x) else x, mlp)


def _probes(seed, count, in_size):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (count, in_size)))


@settings(max_examples=12, deadline=None)
@given(
    in_size=st.integers(1, 3),
    out_size=st.integers(1, 3),
    width=st.integers(1, 5),
    depth=st.integers(0, 3),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    count=st.integers(1, 4),
    io=st.sampled_from(["fixed", "permuted"]),
    seed=st.integers(0, 2**30),
)
def test_permuting_the_weights_permutes_the_features(
    in_size, out_size, width, depth, activation, count, io, seed
):
    with jax.enable_x64(True):
        mlp = _mlp(in_size, out_size, width, depth, activation, seed)
        params = eqx.filter(mlp, eqx.is_array)
        # The hidden neurons' permutations keep the function; permuting the inputs or outputs
        # (io="permuted") does not, and the probes, fixed inputs, do not move with them.
        space = nfn.weight_space(mlp)
        perm = host_permutation(space.sizes, seed)
        probe = nfn.ProbeFeatures(mlp, _probes(seed, count, in_size))
        moved = probe(nfn.permute(space, params, perm))
        expected = nfn.permute(space, probe(params), perm, channels=True)
        for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(expected), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        if io == "permuted" and depth > 0:
            # A permutation that is not a symmetry changes the features by more than a
            # re-indexing: the test above can fail.
            space_io = nfn.weight_space(mlp, io="permuted")
            inputs = space_io.leaves[0].axes[1]
            perm_io = host_permutation(space_io.sizes, seed)
            if in_size > 1 and not np.array_equal(perm_io[inputs], np.arange(in_size)):
                moved = probe(nfn.permute(space_io, params, perm_io))
                expected = nfn.permute(space_io, probe(params), perm_io, channels=True)
                differences = [
                    float(jnp.max(jnp.abs(a - b)))
                    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(expected))
                ]
                assert max(differences) > 1e-9


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_output_channels_are_the_mlp_at_the_probes_and_messages_sum_to_the_preactivations(depth):
    with jax.enable_x64(True):
        mlp = _mlp(2, 3, 4, depth, "sin", 0)
        probes = _probes(1, 5, 2)
        features = nfn.ProbeFeatures(mlp, probes)(mlp)
        np.testing.assert_allclose(features.layers[-1].bias, jax.vmap(mlp)(probes).T, rtol=1e-12)
        first = mlp.layers[0]
        preactivation = jnp.sum(features.layers[0].weight, axis=1) + first.bias[:, None]
        np.testing.assert_allclose(preactivation, (probes @ first.weight.T + first.bias).T)
        leaves = jax.tree.leaves(features)
        params = jax.tree.leaves(eqx.filter(mlp, eqx.is_array))
        assert [x.shape for x in leaves] == [p.shape + (5,) for p in params]


def test_scalar_output_and_learned_activation_have_the_mlp_outputs_and_zero_channels():
    mlp = eqx.nn.MLP(2, "scalar", 4, 2, activation=eqx.nn.PReLU(), key=jax.random.key(0))
    probes = _probes(2, 6, 2).astype(jnp.float32)
    features = nfn.ProbeFeatures(mlp, probes)(eqx.filter(mlp, eqx.is_array))
    np.testing.assert_allclose(features.layers[-1].bias[0], jax.vmap(mlp)(probes), rtol=1e-6)
    # PReLU's slopes are array leaves of the parameters, not a layer's: zero channels.
    slopes = [x for x in jax.tree.leaves(features.activation) if eqx.is_array(x)]
    assert slopes and all(float(jnp.max(jnp.abs(x))) == 0.0 for x in slopes)


@pytest.mark.parametrize("learned", [False, True])
def test_probes_get_a_gradient_only_when_learned(learned):
    mlp = eqx.nn.MLP(2, 1, 4, 1, activation=jnp.sin, key=jax.random.key(0))
    probe = nfn.ProbeFeatures(mlp, _probes(3, 4, 2).astype(jnp.float32), learned=learned)

    def total(module):
        return sum(jnp.sum(x) for x in jax.tree.leaves(module(mlp)))

    grads = eqx.filter_grad(total)(probe)
    assert (float(jnp.max(jnp.abs(grads.probes))) > 0) == learned


def test_bad_inputs_name_the_problem():
    mlp = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"probes must have shape \(K, 2\).*got \(4, 3\)"):
        nfn.ProbeFeatures(mlp, jnp.zeros((4, 3)))
    with pytest.raises(TypeError, match="mlp must be an eqx.nn.MLP.*got Linear"):
        nfn.ProbeFeatures(eqx.nn.Linear(2, 1, key=jax.random.key(0)), jnp.zeros((4, 2)))
    scan = eqx.nn.MLP(2, 1, 4, 3, scan=True, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"scan=False"):
        nfn.ProbeFeatures(scan, jnp.zeros((4, 2)))
