"""The permutation action: group laws, independence per id, and function preservation on real
Equinox networks (the oracle for the action), plus feature conversions."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nfn_strategies import (
    assert_close_scaled,
    conv_nets,
    host_normal,
    host_permutation,
    mlps,
    original_and_permuted,
    random_features,
    weight_spaces,
)

import nfn


def reference_permute(space, tree, perm):
    """numpy reference of the action: axis with id g re-indexed by perm[g]; others untouched."""
    perm = {g: np.asarray(p) for g, p in perm.items()}
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for leaf, x in zip(space, leaves):
        x = np.asarray(x)
        index = [
            perm[a] if a is not None else np.arange(n)
            for a, n in zip(leaf.axes, x.shape[: len(leaf.shape)])
        ]
        index += [np.arange(n) for n in x.shape[len(leaf.shape) :]]
        out.append(x[np.ix_(*index)] if index else x)
    return jax.tree_util.tree_unflatten(treedef, out)


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def as_jax(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


@eqx.filter_jit
def _laws(space, x, p, q, channels):
    def act(tree, perm):
        return nfn.permute(space, tree, perm, channels=channels)

    ident = nfn.identity_permutation(space)
    px = act(x, p)
    return {
        "identity": act(x, ident),
        "p": px,
        "then_q": act(px, q),
        "composed": act(x, nfn.compose_permutations(p, q)),
        "round_trip": act(px, nfn.invert_permutation(p)),
        "inverse_first": act(act(x, nfn.invert_permutation(p)), p),
        "compose_inverse": nfn.compose_permutations(p, nfn.invert_permutation(p)),
        "ident": ident,
    }


@settings(max_examples=6)
@given(weight_spaces(), st.integers(0, 2**30), st.booleans())
def test_group_action_laws(drawn, seed, with_channels):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    x = as_jax(random_features(params, 2, seed) if with_channels else params)
    p = nfn.sample_permutation(space, key=jax.random.key(seed))
    q = nfn.sample_permutation(space, key=jax.random.key(seed + 1))
    r = _laws(space, x, p, q, with_channels)
    assert_trees_equal(r["identity"], x)
    assert_trees_equal(r["p"], reference_permute(space, x, p))
    assert_trees_equal(r["then_q"], r["composed"])
    assert_trees_equal(r["round_trip"], x)
    assert_trees_equal(r["inverse_first"], x)
    assert_trees_equal(r["compose_inverse"], r["ident"])
    for g, n in space.sizes.items():
        assert sorted(np.asarray(p[g]).tolist()) == list(range(n))


def test_permutations_are_independent_per_id_and_per_key():
    space = nfn.WeightSpace.from_spec(
        {"a": np.zeros((6, 6)), "b": np.zeros((6,)), "c": np.zeros((6, 2))},
        {"a": (0, 1), "b": (2,), "c": (3, None)},
    )
    draws = [nfn.sample_permutation(space, key=jax.random.key(k)) for k in range(20)]
    same_across_ids = sum(
        np.array_equal(d[g], d[h]) for d in draws for g in range(4) for h in range(g + 1, 4)
    )
    # 120 pairs, each equal with probability 1/720 if independent: allow at most 2.
    assert same_across_ids <= 2
    same_across_keys = sum(
        np.array_equal(draws[i][0], draws[j][0]) for i in range(20) for j in range(i + 1, 20)
    )
    assert same_across_keys <= 2
    identities = sum(np.array_equal(d[g], np.arange(6)) for d in draws for g in range(4))
    assert identities <= 2


def test_permute_rejects_bad_permutations():
    space = nfn.WeightSpace.from_spec({"a": np.zeros((3, 2))}, {"a": (0, 1)})
    with pytest.raises(ValueError, match=r"\[1\]"):
        nfn.permute(space, {"a": jnp.zeros((3, 2))}, {0: jnp.arange(3)})
    with pytest.raises(ValueError, match="id 1"):
        nfn.permute(space, {"a": jnp.zeros((3, 2))}, {0: jnp.arange(3), 1: jnp.arange(3)})


# --------------------------------------------------------------------------- function preservation


def assert_clearly_different(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1e-3, float(np.max(np.abs(a))))
    assert np.max(np.abs(a - b)) > 1e-3 * scale


@settings(max_examples=5)
@given(mlps(), st.integers(0, 2**30))
def test_permuting_hidden_neurons_preserves_mlp(mlp, seed):
    space = nfn.weight_space(mlp)
    perm, x = host_permutation(space.sizes, seed), host_normal(seed, (7, mlp.in_size))
    assert_close_scaled(*original_and_permuted(mlp, space, perm, x))


def swap_first_two(index_size):
    p = np.arange(index_size)
    p[[0, 1]] = [1, 0]
    return jnp.asarray(p)


def test_permuting_a_fixed_axis_changes_mlp_output():
    mlp = eqx.nn.MLP(3, 3, 5, 2, key=jax.random.key(0))
    x = host_normal(1, (7, 3))
    fixed_space = nfn.weight_space(mlp)
    np_space = nfn.weight_space(mlp, io="permuted")
    # The hidden ids of the "permuted" space keep the function; swapping inputs or outputs not.
    ident = {g: jnp.arange(n) for g, n in np_space.sizes.items()}
    hidden = {**ident, 1: swap_first_two(5), 2: swap_first_two(5)}
    assert_close_scaled(*original_and_permuted(mlp, np_space, hidden, x))
    for boundary in (0, 3):  # input id, output id
        perm = {**ident, boundary: swap_first_two(3)}
        assert_clearly_different(*original_and_permuted(mlp, np_space, perm, x))
    assert fixed_space.leaves[0].axes[1] is None and fixed_space.leaves[-1].axes[0] is None


@settings(max_examples=3)
@given(conv_nets(), st.integers(0, 2**30))
def test_permuting_channels_preserves_conv_net(drawn, seed):
    model, input_shape = drawn
    space = nfn.weight_space(model)
    perm, x = host_permutation(space.sizes, seed), host_normal(seed, (2, *input_shape))
    assert_close_scaled(*original_and_permuted(model, space, perm, x))


def small_conv():
    k = jax.random.split(jax.random.key(3), 2)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 4, 3, padding="SAME", key=k[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(4, 3, 3, key=k[1]),
        ]
    )


def test_conv_relu_conv_hidden_channels_and_fixed_axes():
    model = small_conv()
    x = host_normal(4, (3, 2, 5, 5))
    space = nfn.weight_space(model)
    assert space.sizes == {0: 4}
    perm = {0: jnp.asarray([2, 0, 3, 1])}
    y, y_perm = original_and_permuted(model, space, perm, x)
    assert_close_scaled(y, y_perm)
    # Permuting a fixed axis by hand: input channels of the first kernel, or a spatial axis.
    params, static = eqx.partition(model, eqx.is_array)
    w = np.asarray(params.layers[0].weight)
    for bad in (w[:, ::-1], w[:, :, ::-1], w[..., [1, 0, 2]]):
        bad = jnp.asarray(np.ascontiguousarray(bad))
        broken = eqx.combine(eqx.tree_at(lambda p: p.layers[0].weight, params, bad), static)
        assert_clearly_different(y, original_and_permuted(broken, space, perm, x)[0])


def test_unknown_lambda_is_a_barrier():
    k = jax.random.split(jax.random.key(5), 3)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, 3, 3, key=k[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(3, 4, 2, key=k[1]),
            eqx.nn.Lambda(jnp.ravel),  # mixes channels with positions: not elementwise
            eqx.nn.Linear(4 * 2 * 2, 2, key=k[2]),
        ]
    )
    x = host_normal(6, (3, 1, 5, 5))
    space = nfn.weight_space(model)
    assert space.sizes == {0: 3}
    perm = {0: jnp.asarray([1, 2, 0])}
    y, y_perm = original_and_permuted(model, space, perm, x)
    assert_close_scaled(y, y_perm)
    # Permuting the channels before the barrier like hidden neurons (out channels of the second
    # conv with its bias, without the Linear's inputs, which ravel scrambled) breaks the function.
    params, static = eqx.partition(model, eqx.is_array)
    order = [1, 0, 2, 3]
    broken = eqx.tree_at(
        lambda p: (p.layers[2].weight, p.layers[2].bias),
        params,
        tuple(
            jnp.asarray(np.asarray(v)[order])
            for v in (params.layers[2].weight, params.layers[2].bias)
        ),
    )
    broken = eqx.combine(broken, static)
    assert_clearly_different(y, original_and_permuted(broken, space, perm, x)[0])


# --------------------------------------------------------------------------- features


@eqx.filter_jit
def _feature_round_trips(params, features):
    f = nfn.to_features(params)
    batch = nfn.stack([features, features, features])
    return f, nfn.from_features(f), batch


@settings(max_examples=5)
@given(weight_spaces(), st.integers(0, 2**30), st.integers(1, 3))
def test_feature_round_trips(drawn, seed, channels):
    params, spec = drawn
    space = nfn.WeightSpace.from_spec(params, spec)
    params = as_jax(params)
    features = as_jax(random_features(params, channels, seed))
    f, back, batch = _feature_round_trips(params, features)
    assert_trees_equal(back, params)
    for leaf, x in zip(space, space.flatten(f, channels=True)):
        assert x.shape == (*leaf.shape, 1)
    parts = nfn.unstack(batch)
    assert len(parts) == 3
    for part in parts:
        assert_trees_equal(part, features)
    # The action commutes with the conversion to features.
    perm = nfn.sample_permutation(space, key=jax.random.key(seed))
    assert_trees_equal(
        reference_permute(space, f, perm),
        nfn.to_features(as_jax(reference_permute(space, params, perm))),
    )


def test_feature_conversion_errors():
    with pytest.raises(ValueError, match=r"\['b'\]"):
        nfn.from_features({"a": jnp.zeros((2, 1)), "b": jnp.zeros((2, 2))})
    with pytest.raises(ValueError):
        nfn.stack([])
    with pytest.raises(ValueError):
        nfn.stack([{"a": jnp.zeros(2)}, {"b": jnp.zeros(2)}])
    with pytest.raises(ValueError):
        nfn.unstack({"a": jnp.zeros((2, 1)), "b": jnp.zeros((3, 1))})


def test_grouped_conv_channels_are_not_a_free_symmetry():
    """Why weight_space rejects grouped convs: permuting their output channels across groups
    like ordinary hidden neurons changes the function."""
    k = jax.random.split(jax.random.key(7), 2)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv1d(2, 4, 1, groups=2, key=k[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv1d(4, 2, 1, key=k[1]),
        ]
    )
    params = eqx.filter(model, eqx.is_array)
    spec = jax.tree.map(lambda v: (None,) * v.ndim, params)
    spec = eqx.tree_at(
        lambda s: (s.layers[0].weight, s.layers[0].bias, s.layers[2].weight),
        spec,
        ((0, None, None), (0, None), (None, 0, None)),
    )
    naive = nfn.WeightSpace.from_spec(params, spec)
    x = host_normal(8, (3, 2, 5))
    # Swapping channels within a group would be fine; across groups (0 <-> 2) it is not.
    perm = {0: jnp.asarray([2, 1, 0, 3])}
    assert_clearly_different(*original_and_permuted(model, naive, perm, x))


# --------------------------------------------------------------------------- batches and bad input


def test_stacked_batch_is_not_mistaken_for_channels():
    """16 networks of an MLP(16 -> 16 -> 16), stacked, have the shapes of one network's features
    with 16 channels; guessing would permute the batch axis."""
    keys = jax.random.split(jax.random.key(0), 16)
    nets = [eqx.filter(eqx.nn.MLP(16, 16, 16, 1, key=k), eqx.is_array) for k in keys]
    space = nfn.weight_space(eqx.nn.MLP(16, 16, 16, 1, key=keys[0]))
    batch = nfn.stack(nets)
    perm = host_permutation(space.sizes, 0)
    with pytest.raises(ValueError, match="vmap"):
        nfn.permute(space, batch, perm)
    # Saying what the tree is resolves it; vmap permutes every network on its own.
    one_by_one = nfn.stack([nfn.permute(space, net, perm) for net in nets])
    vmapped = jax.vmap(lambda t: nfn.permute(space, t, perm, channels=False))(batch)
    assert_trees_equal(vmapped, one_by_one)
    as_features = nfn.permute(space, batch, perm, channels=True)
    assert_trees_equal(as_features, reference_permute(space, batch, perm))


def test_batch_of_parameters_names_vmap():
    space = nfn.WeightSpace.from_spec({"w": np.zeros((3, 2))}, {"w": (0, None)})
    with pytest.raises(ValueError, match="vmap"):
        nfn.permute(space, {"w": jnp.zeros((5, 3, 2))}, {0: jnp.arange(3)})
    with pytest.raises(ValueError, match=r"\['w'\]"):
        nfn.permute(space, {"w": jnp.zeros((5, 3, 2))}, {0: jnp.arange(3)}, channels=False)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ([0, 0, 2], "index 0 appears 2 times and index 1 is missing"),
        ([0, 1, 3], "outside range(3)"),
        ([-1, 0, 1], "outside range(3)"),
    ],
)
def test_permute_rejects_index_arrays_that_are_not_permutations(bad, fragment):
    space = nfn.WeightSpace.from_spec({"a": np.zeros((3, 2))}, {"a": (7, None)})
    with pytest.raises(ValueError, match=re.escape("id 7 is not a permutation of range(3)")):
        nfn.permute(space, {"a": jnp.zeros((3, 2))}, {7: jnp.asarray(bad)})
    with pytest.raises(ValueError, match=re.escape(fragment)):
        nfn.permute(space, {"a": jnp.zeros((3, 2))}, {7: jnp.asarray(bad)})
    # Under the test suite's runtime type checker the annotation rejects floats first.
    with pytest.raises((ValueError, TypeError), match="int"):
        nfn.permute(space, {"a": jnp.zeros((3, 2))}, {7: jnp.asarray([0.0, 1.0, 2.0])})
