"""The weight-space examples' `--symmetry` data paths: each network of a zoo that mixes relu and
tanh CNNs is canonicalised and augmented under its own activation's symmetry."""

import pathlib
import sys

import equinox as eqx
import jax
import numpy as np

import nfn
import nfn.zoo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import _weight_tasks as tasks  # noqa: E402


def test_mixed_zoo_canonicalised_and_augmented_per_network():
    template = nfn.zoo.ZooCNN(key=jax.random.key(0))
    spaces = tuple(nfn.zoo.cnn_space(template, activation=a) for a in nfn.zoo.ACTIVATIONS)
    nets = [nfn.zoo.ZooCNN(key=jax.random.key(k)) for k in range(4)]
    params = nfn.stack([eqx.filter(net, eqx.is_array) for net in nets])
    group = np.array([0, 1, 1, 0])  # relu, tanh, tanh, relu
    symmetries = tasks.Symmetries(spaces, group)
    canonical = symmetries.canonicalize(params, group)
    moved = jax.jit(symmetries.augment)(jax.random.key(1), params, group)
    x = jax.random.normal(jax.random.key(2), (3, 1, 8, 8))
    for k, net in enumerate(nets):
        activation = nfn.zoo.ACTIVATIONS[group[k]]
        one = jax.tree.map(lambda p, k=k: p[k], params)
        expected = nfn.canonicalize(spaces[group[k]], one)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda p, k=k: p[k], canonical)),
                        jax.tree.leaves(expected)):  # fmt: skip
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        y = jax.vmap(lambda image, n=net, a=activation: n(image, activation=a))(x)
        for version in (canonical, moved):
            model = eqx.combine(jax.tree.map(lambda p, k=k: p[k], version), net)
            np.testing.assert_allclose(
                jax.vmap(lambda image, m=model, a=activation: m(image, activation=a))(x),
                y,
                rtol=1e-4,
                atol=1e-5,
            )
        # Augmentation did move the weights (flips for tanh, scales for relu).
        assert not np.allclose(jax.tree.leaves(moved)[0][k], jax.tree.leaves(params)[0][k])
