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


def test_zero_bias_siren_keeps_the_weights_and_zeroes_the_biases():
    key = jax.random.key(4)
    uniform = nfn.zoo.siren(width=32, depth=2, omega0=30.0, key=key)
    zero = nfn.zoo.siren(width=32, depth=2, omega0=30.0, bias_init="zero", key=key)
    for a, b in zip(uniform.layers, zero.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        assert np.any(np.asarray(a.bias) != 0.0)
        np.testing.assert_array_equal(b.bias, 0.0)
    # fit_sirens starts from the same initialisation (zero steps: the init itself).
    images = jnp.zeros((1, 4, 4))
    sirens, _ = nfn.zoo.fit_sirens(
        images, steps=0, width=32, omega0=30.0, shared_init=True, bias_init="zero", key=key
    )
    for layer in sirens.layers:
        np.testing.assert_array_equal(layer.bias, 0.0)
    # (the tests' runtime type checker raises a TypeError first; without it, a ValueError)
    with pytest.raises((ValueError, TypeError), match="bias_init"):
        nfn.zoo.siren(bias_init="normal", key=key)


def _random_siren():
    # A SIREN at initialisation decodes to a high-frequency pattern: any misplaced pixel shows.
    return nfn.zoo.siren(width=32, depth=2, omega0=30.0, key=jax.random.key(7))


def test_transform_siren_rotates_and_shifts_the_decoded_image():
    model = _random_siren()
    image = np.asarray(nfn.zoo.decode(model, 28, 28))
    # A quarter turn maps the pixel grid onto itself: every pixel is the rotated image's.
    turned = nfn.zoo.decode(nfn.zoo.transform_siren(model, rotation=np.pi / 2), 28, 28)
    np.testing.assert_allclose(turned, np.rot90(image, -1), atol=1e-4)
    # A shift by 3 grid steps down the rows: the interior pixels are the shifted image's.
    step = 2.0 / 27
    shifted = nfn.zoo.transform_siren(model, translation=(3 * step, -2 * step))
    np.testing.assert_allclose(nfn.zoo.decode(shifted, 28, 28)[:-3, 2:], image[3:, :-2], atol=1e-4)
    # Zoom by -1 (a half turn) and the identity.
    flipped = nfn.zoo.decode(nfn.zoo.transform_siren(model, scale=-1.0), 28, 28)
    np.testing.assert_allclose(flipped, image[::-1, ::-1], atol=1e-4)
    same = nfn.zoo.decode(nfn.zoo.transform_siren(model), 28, 28)
    np.testing.assert_allclose(same, image, atol=1e-6)
    # Only the first layer changes.
    moved = nfn.zoo.transform_siren(model, rotation=0.3, scale=1.1, translation=(0.1, 0.2))
    for a, b in zip(model.layers[1:], moved.layers[1:]):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)


def test_augment_siren_evaluates_the_siren_at_moved_coordinates():
    model = _random_siren()
    params = eqx.filter(model, eqx.is_array)
    keys = jax.random.split(jax.random.key(8), 5)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 5), params)
    moved = jax.vmap(lambda k, p: nfn.zoo.augment_siren(p, key=k))(keys, stacked)
    coords = nfn.zoo.pixel_grid(28, 28)
    for i, key in enumerate(keys):
        # The same draws as augment_siren's, applied to the coordinates instead.
        angle_key, scale_key, shift_key = jax.random.split(key, 3)
        angle = np.deg2rad(45.0) * float(jax.random.uniform(angle_key, minval=-1, maxval=1))
        factor = 1.0 + 0.2 * float(jax.random.uniform(scale_key, minval=-1, maxval=1))
        shift = 0.25 * np.asarray(jax.random.uniform(shift_key, (2,), minval=-1, maxval=1))
        assert abs(angle) > 1e-3 and abs(factor - 1) > 1e-3
        rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        moved_coords = factor * np.asarray(coords) @ rotate.T + shift
        expected = jax.vmap(model)(jnp.asarray(moved_coords, jnp.float32))
        one = eqx.combine(jax.tree.map(lambda x, i=i: x[i], moved), model)
        np.testing.assert_allclose(jax.vmap(one)(coords), expected, atol=1e-4)
