"""Train a zoo of small CNNs on scikit-learn's digits, every network in one vmapped program."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from nfn.zoo._cnn import ACTIVATIONS, ZooCNN, _logits

# The hyperparameters each network draws, in the order of the zoo's table.
HPARAMS: tuple[str, ...] = (
    "learning_rate",
    "init_scale",
    "weight_decay",
    "dropout",
    "train_fraction",
    "epochs",
    "activation",
)


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """How to generate a CNN zoo (the ranges follow the kinds of hyperparameters Unterthiner et
    al.'s CNN Zoo varies, sized for 8x8 digits).

    **Fields:**

    - `num_networks`: networks in the zoo.
    - `channels`: channels of both convolutions.
    - `max_epochs`: the most epochs a network trains; each draws `epochs` in `1..max_epochs`.
    - `batch_size`: minibatch size.
    - `test_size`: digits held out for every network's test accuracy (the same split for all).
    - `learning_rate`, `init_scale`, `weight_decay`: log-uniform ranges. `init_scale`
      multiplies Equinox's default initialisation of every array; `weight_decay` is an L2
      penalty on all arrays, added to the loss.
    - `dropout`, `train_fraction`: uniform ranges. Dropout drops whole channels (feature
      maps) after each convolution. A network trains on a random `train_fraction` of the
      training digits.
    - `activations`: the activations drawn from (uniformly).
    - `seed`: seed of the whole zoo (data split, hyperparameters, initialisation, order).
    """

    num_networks: int = 1024
    channels: int = 8
    max_epochs: int = 10
    batch_size: int = 32
    test_size: int = 497
    learning_rate: tuple[float, float] = (5e-4, 5e-2)
    init_scale: tuple[float, float] = (0.3, 3.0)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    dropout: tuple[float, float] = (0.0, 0.5)
    train_fraction: tuple[float, float] = (0.1, 1.0)
    activations: tuple[str, ...] = ACTIVATIONS
    seed: int = 0

    def __post_init__(self):
        for name in ("num_networks", "channels", "max_epochs", "batch_size", "test_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ZooConfig.{name} must be a positive int, got {value!r}")
        for name in ("learning_rate", "init_scale", "weight_decay", "dropout", "train_fraction"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"ZooConfig.{name} must be a (low, high) range, got {low, high}")
        if self.learning_rate[0] <= 0 or self.init_scale[0] <= 0 or self.weight_decay[0] <= 0:
            raise ValueError("ZooConfig: log-uniform ranges must be positive")
        if not (0.0 <= self.dropout[0] and self.dropout[1] < 1.0):
            raise ValueError(f"ZooConfig.dropout must lie in [0, 1), got {self.dropout}")
        if not (0.0 < self.train_fraction[0] and self.train_fraction[1] <= 1.0):
            raise ValueError(
                f"ZooConfig.train_fraction must lie in (0, 1], got {self.train_fraction}"
            )
        unknown = [a for a in self.activations if a not in ACTIVATIONS]
        if unknown or not self.activations:
            raise ValueError(f"ZooConfig.activations must be drawn from {ACTIVATIONS}")


def load_digits_split(
    test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as `(n, 1, 8, 8)` floats in [0, 1], split at random
    into train and test by `seed`; returns `(x_train, y_train, x_test, y_test)`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "nfn.zoo needs scikit-learn for the digits data: pip install -e '.[zoo]'"
        ) from error
    digits = load_digits()
    # The digits' pixels are counts 0..16.
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int32)
    if not 0 < test_size < len(y):
        raise ValueError(f"test_size must lie in 1..{len(y) - 1}, got {test_size}")
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:test_size], order[test_size:]
    return x[train], y[train], x[test], y[test]


def sample_hparams(config: ZooConfig, key: PRNGKeyArray) -> dict[str, np.ndarray]:
    """Each network's hyperparameters, one array of length `num_networks` per name in
    `HPARAMS` (`activation` is an index into `ACTIVATIONS`)."""
    n = config.num_networks
    keys = jax.random.split(key, len(HPARAMS))

    def log_uniform(k, bounds):
        low, high = math.log(bounds[0]), math.log(bounds[1])
        return np.exp(np.asarray(jax.random.uniform(k, (n,), minval=low, maxval=high)))

    def uniform(k, bounds):
        return np.asarray(jax.random.uniform(k, (n,), minval=bounds[0], maxval=bounds[1]))

    choices = np.asarray([ACTIVATIONS.index(a) for a in config.activations])
    return {
        "learning_rate": log_uniform(keys[0], config.learning_rate).astype(np.float32),
        "init_scale": log_uniform(keys[1], config.init_scale).astype(np.float32),
        "weight_decay": log_uniform(keys[2], config.weight_decay).astype(np.float32),
        "dropout": uniform(keys[3], config.dropout).astype(np.float32),
        "train_fraction": uniform(keys[4], config.train_fraction).astype(np.float32),
        "epochs": np.asarray(
            jax.random.randint(keys[5], (n,), 1, config.max_epochs + 1), dtype=np.int32
        ),
        "activation": choices[
            np.asarray(jax.random.randint(keys[6], (n,), 0, len(choices)))
        ].astype(np.int32),
    }


class _AdamState(eqx.Module):
    step: Int[Array, ""]
    mu: ZooCNN
    nu: ZooCNN


def _adam(grads, state: _AdamState, learning_rate, active):
    """One Adam step (b1=0.9, b2=0.999); `active` (0 or 1) freezes a network that has finished
    its own number of epochs while the others go on."""
    step = state.step + active.astype(state.step.dtype)
    mu = jax.tree.map(lambda m, g: jnp.where(active, 0.9 * m + 0.1 * g, m), state.mu, grads)
    nu = jax.tree.map(lambda v, g: jnp.where(active, 0.999 * v + 0.001 * g**2, v), state.nu, grads)
    t = jnp.maximum(step, 1).astype(jnp.float32)
    scale = learning_rate * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t) * active

    def update(m, v):
        return -scale * m / (jnp.sqrt(v) + 1e-8 * jnp.sqrt(1 - 0.999**t))

    return jax.tree.map(update, mu, nu), _AdamState(step, mu, nu)


class _NetState(eqx.Module):
    params: ZooCNN
    opt: _AdamState
    key: PRNGKeyArray


def make_train(config: ZooConfig, x_train: Float[Array, "n 1 8 8"], y_train: Int[Array, " n"]):
    """Returns `(init, train)`, purejaxrl style: `init(key, hp)` builds one network,
    `train(state, hp, train_mask)` trains it for `config.max_epochs` epochs under `lax.scan`
    (the network stops updating after its own `epochs`). Both are written for one network and
    vmapped over the zoo by the caller."""
    n_train = x_train.shape[0]
    steps = n_train // config.batch_size
    static = eqx.partition(ZooCNN(channels=config.channels, key=jax.random.key(0)), eqx.is_array)[1]

    def init(key: PRNGKeyArray, hp: dict[str, Array]) -> _NetState:
        init_key, run_key = jax.random.split(key)
        model = ZooCNN(channels=config.channels, key=init_key)
        params = eqx.filter(model, eqx.is_array)
        params = jax.tree.map(lambda p: p * hp["init_scale"], params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return _NetState(params, _AdamState(jnp.zeros((), jnp.int32), zeros, zeros), run_key)

    def loss_fn(params, x, y, weight, hp, key):
        model = eqx.combine(params, static)
        logits = _logits(model, x, hp["activation"] == 1, hp["dropout"], key)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
        data = jnp.sum(weight * nll) / jnp.maximum(jnp.sum(weight), 1.0)
        l2 = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return data + hp["weight_decay"] * l2

    def train(state: _NetState, hp: dict[str, Array], train_mask: Float[Array, " n"]):
        def epoch(state: _NetState, epoch_index):
            key, order_key = jax.random.split(state.key)
            order = jax.random.permutation(order_key, n_train)[: steps * config.batch_size]
            batches = order.reshape(steps, config.batch_size)
            active = (epoch_index < hp["epochs"]).astype(jnp.float32)

            def step(carry, batch):
                params, opt, key = carry
                key, drop_key = jax.random.split(key)
                grads = jax.grad(loss_fn)(
                    params, x_train[batch], y_train[batch], train_mask[batch], hp, drop_key
                )
                # A minibatch holding none of this network's digits must not move it (its
                # data loss is zero, but Adam's step on the decay term alone would).
                any_data = (jnp.sum(train_mask[batch]) > 0).astype(jnp.float32)
                updates, opt = _adam(grads, opt, hp["learning_rate"], active * any_data)
                params = jax.tree.map(lambda p, u: p + u, params, updates)
                return (params, opt, key), None

            (params, opt, key), _ = jax.lax.scan(step, (state.params, state.opt, key), batches)
            return _NetState(params, opt, key), None

        state, _ = jax.lax.scan(epoch, state, jnp.arange(config.max_epochs))
        return state

    return init, train, static


def accuracy(params, static, x, y, activation_index, mask=None):
    """Accuracy of one network on `(x, y)`, counting only entries where `mask` is 1."""
    model = eqx.combine(params, static)
    logits = _logits(model, x, activation_index == 1, 0.0, None)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    if mask is None:
        return jnp.mean(correct)
    return jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.0)
