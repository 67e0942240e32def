"""The CNN zoo: the training forward pass, the weight space, the file format and its errors."""

import json
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfn
import nfn.zoo
from nfn.zoo._cnn import _logits


@pytest.fixture(scope="module")
def small_zoo():
    config = nfn.zoo.ZooConfig(num_networks=8, max_epochs=1, test_size=300, seed=3)
    return nfn.zoo.generate_cnn_zoo(config)


def test_training_forward_matches_equinox_convolutions():
    model = nfn.zoo.ZooCNN(key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 1, 8, 8))
    for activation, act in (("relu", jax.nn.relu), ("tanh", jnp.tanh)):

        def reference(xi, act=act):
            h = act(model.conv2(act(model.conv1(xi))))
            return model.head(jnp.mean(h, axis=(1, 2)))

        expected = jax.vmap(reference)(x)
        got = _logits(model, x, jnp.asarray(activation == "tanh"), 0.0, None)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(model(x[0], activation=activation), expected[0], atol=1e-5)


def test_permuting_channels_preserves_the_function(small_zoo):
    model = small_zoo.model(0)
    params = eqx.filter(model, eqx.is_array)
    perm = nfn.sample_permutation(small_zoo.space, key=jax.random.key(4))
    permuted = eqx.combine(nfn.permute(small_zoo.space, params, perm), model)
    x = jax.random.uniform(jax.random.key(5), (1, 8, 8))
    assert not np.allclose(permuted.conv1.weight, model.conv1.weight)
    np.testing.assert_allclose(permuted(x), model(x), atol=1e-5)
    assert small_zoo.weight_space("permuted").sizes == {0: 1, 1: 8, 2: 8, 3: 10}


def test_zoo_round_trip(small_zoo, tmp_path):
    zoo = small_zoo
    assert len(zoo) == 8
    assert set(zoo.hparams) == set(nfn.zoo.HPARAMS)
    assert np.all((zoo.test_accuracy >= 0) & (zoo.test_accuracy <= 1))
    # Different hyperparameters and initialisations give different networks.
    assert len({float(w) for w in zoo.params.conv1.weight[:, 0, 0, 0, 0]}) == 8
    path = tmp_path / "zoo.npz"
    nfn.zoo.save_zoo(zoo, path)
    loaded = nfn.zoo.load_zoo(path)
    for a, b in zip(jax.tree.leaves(zoo.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)
    for name in nfn.zoo.HPARAMS:
        np.testing.assert_array_equal(zoo.hparams[name], loaded.hparams[name])
    np.testing.assert_array_equal(zoo.test_accuracy, loaded.test_accuracy)
    np.testing.assert_array_equal(zoo.train_accuracy, loaded.train_accuracy)
    assert loaded.space == zoo.space
    assert loaded.metadata["config"]["num_networks"] == 8
    # The stored accuracy is the model's accuracy on the stored test split.
    _, _, x_test, y_test = nfn.zoo.load_digits_split(300, 3)
    index = 5
    activation = nfn.zoo.ACTIVATIONS[int(loaded.hparams["activation"][index])]
    logits = jax.vmap(lambda x: loaded.model(index)(x, activation=activation))(x_test)
    accuracy = np.mean(np.argmax(logits, -1) == y_test)
    np.testing.assert_allclose(accuracy, loaded.test_accuracy[index], atol=1e-6)
    # The features of a stacked zoo go straight into an encoder.
    encoder = nfn.InvariantEncoder(loaded.space, "scalar", depth=1, key=jax.random.key(0))
    assert jax.vmap(encoder)(nfn.to_features(loaded.params)).shape == (8,)


def _rewrite(src, dst, change):
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def test_bad_zoo_files_name_the_file(small_zoo, tmp_path):
    good = tmp_path / "good.npz"
    nfn.zoo.save_zoo(small_zoo, good)
    missing = tmp_path / "missing.npz"
    with pytest.raises(nfn.zoo.ZooFormatError, match="missing.npz: no such file"):
        nfn.zoo.load_zoo(missing)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(nfn.zoo.ZooFormatError, match="truncated.npz: not a readable"):
        nfn.zoo.load_zoo(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(nfn.zoo.ZooFormatError, match="garbage.npz"):
        nfn.zoo.load_zoo(garbage)

    def version(arrays):
        meta = json.loads(str(arrays["metadata"]))
        meta["format_version"] = 99
        arrays["metadata"] = np.asarray(json.dumps(meta))

    cases = {
        "version": (version, "format_version 99"),
        "no_meta": (lambda a: a.pop("metadata"), "no 'metadata' entry"),
        "leaf": (lambda a: a.pop("params/.conv2.weight"), "missing entry 'params/.conv2.weight'"),
        "shape": (
            lambda a: a.update({"test_accuracy": a["test_accuracy"][:3]}),
            "'test_accuracy' is missing or not of shape",
        ),
        "hparam": (lambda a: a.pop("hparams/dropout"), "'hparams/dropout'"),
    }
    for name, (change, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        _rewrite(good, path, change)
        with pytest.raises(nfn.zoo.ZooFormatError, match=f"{name}.npz: .*{message}"):
            nfn.zoo.load_zoo(path)
    assert zipfile.is_zipfile(good)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ZooConfig.num_networks"):
        nfn.zoo.ZooConfig(num_networks=0)
    with pytest.raises(ValueError, match="ZooConfig.dropout"):
        nfn.zoo.ZooConfig(dropout=(0.0, 1.0))
    with pytest.raises(ValueError, match="ZooConfig.activations"):
        nfn.zoo.ZooConfig(activations=("gelu",))


def test_sirens_fit_and_decode_their_images():
    _, _, x_test, _ = nfn.zoo.load_digits_split(300, 0)
    images = jnp.asarray(x_test[:4, 0])
    sirens, errors = nfn.zoo.fit_sirens(images, steps=150, key=jax.random.key(0))
    params = eqx.filter(sirens, eqx.is_array)
    assert params.layers[0].weight.shape == (4, 16, 2)
    # Each SIREN decodes to its own image, far closer than to the others.
    for i in range(4):
        one = eqx.combine(jax.tree.map(lambda x, i=i: x[i], params), sirens)
        decoded = nfn.zoo.decode(one, 8, 8)
        own = float(jnp.mean((decoded - images[i]) ** 2))
        np.testing.assert_allclose(own, errors[i], rtol=1e-3, atol=1e-7)
        assert own < 1e-3
        others = [float(jnp.mean((decoded - images[j]) ** 2)) for j in range(4) if j != i]
        assert min(others) > 10 * own
    # The first layer carries omega0: its initial weights span [-omega0 / 2, omega0 / 2].
    w0 = nfn.zoo.siren(omega0=10.0, key=jax.random.key(1)).layers[0].weight
    assert 3.0 < float(jnp.max(jnp.abs(w0))) <= 5.0
