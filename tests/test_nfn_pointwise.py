"""Pointwise layers (Pointwise, ChannelLayerNorm, FeatureDropout) and the statistics featurizer."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfn

SPEC = {"w": (0, None), "b": (0,), "h": (1, 1), "s": ()}
SIZES = {0: 5, 1: 3}


def make_space():
    params = {
        name: np.zeros(tuple(SIZES[a] if a is not None else 2 for a in axes), np.float32)
        for name, axes in SPEC.items()
    }
    return nfn.WeightSpace.from_spec(params, SPEC)


def features(space, channels, seed, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return space.unflatten(
        [
            jnp.asarray(loc + scale * rng.standard_normal((*leaf.shape, channels)), jnp.float32)
            for leaf in space
        ]
    )


def test_pointwise_applies_function_entrywise():
    space = make_space()
    x = features(space, 3, seed=0)
    y = nfn.Pointwise(jax.nn.relu)(x)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        np.testing.assert_array_equal(np.maximum(np.asarray(a), 0), np.asarray(b))


def test_channel_layer_norm_normalises_every_position():
    space = make_space()
    x = features(space, 6, seed=1, loc=3.0, scale=5.0)
    norm = nfn.ChannelLayerNorm(space, 6)
    y = eqx.filter_jit(norm)(x)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(b.mean(-1), 0.0, atol=1e-5)
        var = a.var(-1)
        np.testing.assert_allclose(b.var(-1), var / (var + 1e-5), rtol=1e-4)
    # Learned per-leaf, per-channel scale and offset are applied after normalising.
    rng = np.random.default_rng(2)
    scale = tuple(jnp.asarray(rng.standard_normal(6), jnp.float32) for _ in space.leaves)
    offset = tuple(jnp.asarray(rng.standard_normal(6), jnp.float32) for _ in space.leaves)
    affine = eqx.tree_at(lambda m: (m.scale, m.offset), norm, (scale, offset))
    z = eqx.filter_jit(affine)(x)
    for k, (b, c) in enumerate(zip(jax.tree.leaves(y), jax.tree.leaves(z))):
        expected = np.asarray(b) * np.asarray(scale[k]) + np.asarray(offset[k])
        np.testing.assert_allclose(np.asarray(c), expected, rtol=1e-5, atol=1e-5)
    # Equivariant: normalising commutes with permutations of positions.
    perm = nfn.sample_permutation(space, key=jax.random.key(3))
    a = nfn.permute(space, z, perm, channels=True)
    b = eqx.filter_jit(affine)(nfn.permute(space, x, perm, channels=True))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels", [0, 1, 2.0])
def test_channel_layer_norm_rejects_fewer_than_two_channels(channels):
    with pytest.raises((ValueError, TypeError)):
        nfn.ChannelLayerNorm(make_space(), channels)


def test_feature_dropout_needs_key_unless_inference():
    space = make_space()
    x = features(space, 2, seed=4)
    dropout = nfn.FeatureDropout(0.5)
    with pytest.raises(ValueError, match="key"):
        dropout(x)
    for out in (dropout(x, inference=True), nfn.FeatureDropout(0.5, inference=True)(x)):
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(out)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # p = 0 is the identity even without a key.
    assert nfn.FeatureDropout(0.0)(x) is x
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p"):
            nfn.FeatureDropout(p)


def test_feature_dropout_keeps_expectation():
    p = 0.3
    tree = {"a": jnp.ones((100, 100, 1)), "b": jnp.full((50, 1), 2.0)}
    drop = eqx.filter_jit(lambda x, key: nfn.FeatureDropout(p)(x, key=key))
    out = drop(tree, jax.random.key(5))
    a = np.asarray(out["a"])
    # Kept entries are rescaled by 1 / (1 - p); dropped entries are zero.
    assert np.all((a == 0) | np.isclose(a, 1 / (1 - p), rtol=1e-6))
    n = a.size
    assert abs((a == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs(a.mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)
    # Different keys give different masks; every leaf gets its own mask.
    other = np.asarray(drop(tree, jax.random.key(6))["a"])
    assert not np.array_equal(a == 0, other == 0)
    b = np.asarray(out["b"])
    assert np.all((b == 0) | np.isclose(b, 2 / (1 - p), rtol=1e-6))
    assert 0 < (b == 0).sum() < b.size


def test_statistics_featurizer_values_and_invariance():
    space = make_space()
    x = features(space, 2, seed=7)
    featurizer = nfn.StatisticsFeaturizer(space, quantiles=(0.0, 0.5, 1.0))
    run = eqx.filter_jit(featurizer)
    stats = np.asarray(run(x))
    per_leaf = featurizer.statistics_per_leaf
    assert per_leaf == 5
    assert stats.shape == (len(space) * per_leaf * 2,)
    expected = []
    for leaf in jax.tree.leaves(x):
        flat = np.asarray(leaf).reshape(-1, 2)
        expected += [flat.mean(0), flat.var(0)]
        expected += list(np.quantile(flat, [0.0, 0.5, 1.0], axis=0))
    np.testing.assert_allclose(stats, np.concatenate(expected), rtol=1e-5, atol=1e-6)
    # Invariant to the weight-space action, and to any shuffle of a leaf's positions.
    perm = nfn.sample_permutation(space, key=jax.random.key(8))
    np.testing.assert_allclose(
        np.asarray(run(nfn.permute(space, x, perm, channels=True))), stats, atol=1e-6
    )
    rng = np.random.default_rng(9)
    shuffled = space.unflatten(
        [
            jnp.asarray(rng.permutation(np.asarray(v).reshape(-1, 2)).reshape(v.shape))
            for v in space.flatten(x, channels=True)
        ]
    )
    np.testing.assert_allclose(np.asarray(run(shuffled)), stats, atol=1e-6)
    # ... but not to changing a value.
    changed = jax.tree.map(lambda v: v.at[(0,) * v.ndim].add(1.0), x)
    assert np.max(np.abs(np.asarray(run(changed)) - stats)) > 1e-2
    with pytest.raises(ValueError):
        nfn.StatisticsFeaturizer(space, quantiles=(0.5, 1.5))
