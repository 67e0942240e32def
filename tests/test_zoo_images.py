"""The 28x28 digit generator and one SIREN fitted to one of its images at the stated quality."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfn.zoo

SMALL = nfn.zoo.AffineDigitsConfig(train=40, val=20, test=30, seed=3)


def test_affine_digits_shapes_balance_and_range():
    splits = nfn.zoo.affine_digits(SMALL)
    assert set(splits) == {"train", "val", "test"}
    for name, count in [("train", 40), ("val", 20), ("test", 30)]:
        images, labels = splits[name]
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        assert images.dtype == jnp.float32 and labels.dtype == jnp.int32
        np.testing.assert_array_equal(np.bincount(np.asarray(labels), minlength=10), count // 10)
        assert float(jnp.min(images)) >= 0.0
        np.testing.assert_allclose(np.asarray(jnp.max(images, axis=(1, 2))), 1.0, rtol=1e-6)
        # A digit, not a blank or a full square: some ink, mostly background, centred (the
        # outer frame of two pixels far darker than the centre).
        ink = np.asarray(jnp.mean(images > 0.5, axis=(1, 2)))
        assert np.all((ink > 0.03) & (ink < 0.5)), ink
        frame = jnp.ones((28, 28), bool).at[2:-2, 2:-2].set(False)
        assert float(jnp.mean(images[:, frame])) < 0.2 * float(jnp.mean(images[:, 8:20, 8:20]))


def test_affine_digits_is_deterministic_for_a_seed():
    first, again = nfn.zoo.affine_digits(SMALL), nfn.zoo.affine_digits(SMALL)
    other = nfn.zoo.affine_digits(nfn.zoo.AffineDigitsConfig(train=40, val=20, test=30, seed=4))
    for name in first:
        np.testing.assert_array_equal(np.asarray(first[name][0]), np.asarray(again[name][0]))
        assert not np.allclose(np.asarray(first[name][0]), np.asarray(other[name][0]))
    # Two images of one class from one split differ (their own source and transform).
    images, labels = first["train"]
    zeros = np.asarray(images)[np.asarray(labels) == 0]
    assert np.abs(zeros[0] - zeros[1]).max() > 0.1


def test_affine_digits_config_errors_name_the_field():
    with pytest.raises(ValueError, match="AffineDigitsConfig.train"):
        nfn.zoo.AffineDigitsConfig(train=45)
    with pytest.raises(ValueError, match="AffineDigitsConfig.test"):
        nfn.zoo.AffineDigitsConfig(test=0)
    with pytest.raises(ValueError, match="AffineDigitsConfig.source_val"):
        nfn.zoo.AffineDigitsConfig(source_val=900, source_test=900)


def test_one_siren_fits_a_28x28_digit_to_30_db():
    # The default setting of examples/inr_classification.py: 2 -> 32 -> 32 -> 1, omega0 30,
    # its own random initialisation, 150 Adam steps at 1e-2.
    images = nfn.zoo.affine_digits(SMALL)["test"][0][:1]
    sirens, errors = nfn.zoo.fit_sirens(
        images,
        steps=150,
        learning_rate=1e-2,
        width=32,
        depth=2,
        omega0=30.0,
        shared_init=False,
        key=jax.random.key(0),
    )
    params = eqx.filter(sirens, eqx.is_array)
    assert params.layers[1].weight.shape == (1, 32, 32)
    one = eqx.combine(jax.tree.map(lambda x: x[0], params), sirens)
    decoded = nfn.zoo.decode(one, 28, 28)
    mse = float(jnp.mean((decoded - images[0]) ** 2))
    np.testing.assert_allclose(mse, float(errors[0]), rtol=1e-3)
    assert nfn.zoo.psnr(mse) > 30.0, nfn.zoo.psnr(mse)
    # The initial SIREN is far from the image (the fit, not the init, gives the quality).
    init = nfn.zoo.siren(
        width=32, depth=2, omega0=30.0, key=jax.random.split(jax.random.key(0), 1)[0]
    )
    assert nfn.zoo.psnr(jnp.mean((nfn.zoo.decode(init, 28, 28) - images[0]) ** 2)) < 15.0


def test_psnr():
    np.testing.assert_allclose(nfn.zoo.psnr(np.array([1e-2, 1e-4])), [20.0, 40.0])
    assert nfn.zoo.psnr(0.0) == np.inf
