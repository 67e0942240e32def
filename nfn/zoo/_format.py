"""A CNN zoo in memory, and its file format (one `.npz`, JSON metadata, a format version)."""

import dataclasses
import json
import os
import time
import zipfile
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from nfn._spec import WeightSpace
from nfn.zoo._cnn import ACTIVATIONS, ZooCNN, cnn_space
from nfn.zoo._generate import (
    HPARAMS,
    ZooConfig,
    accuracy,
    load_digits_split,
    make_train,
    sample_hparams,
)

FORMAT = "nfn-cnn-zoo"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Zoo:
    """A zoo of trained [`nfn.zoo.ZooCNN`][]s.

    **Fields:**

    - `params`: the networks' arrays (JAX arrays), `eqx.filter(ZooCNN(...), eqx.is_array)`
      with every leaf stacked on a leading axis of length `num_networks`.
    - `space`: their weight space, true symmetry (`cnn_space(model, io="fixed")`); call
      [`nfn.zoo.Zoo.weight_space`][] for the `io="permuted"` one.
    - `hparams`: the hyperparameter table, `{name: array of length num_networks}` for every
      name in `nfn.zoo.HPARAMS` (`activation` indexes `nfn.zoo.ACTIVATIONS`).
    - `train_accuracy`, `test_accuracy`: each network's accuracy on its own training digits and
      on the held-out digits (the same for every network).
    - `metadata`: the generator's settings and the architecture (as stored in the file).
    """

    params: Any
    space: WeightSpace
    hparams: dict[str, np.ndarray]
    train_accuracy: np.ndarray
    test_accuracy: np.ndarray
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.test_accuracy)

    def template(self) -> ZooCNN:
        """A `ZooCNN` of the zoo's architecture (random arrays) to `eqx.combine` with one
        network's params."""
        return ZooCNN(**self.metadata["architecture"], key=jax.random.key(0))

    def model(self, index: int) -> ZooCNN:
        """Network `index` as a model; call it with
        `activation=nfn.zoo.ACTIVATIONS[zoo.hparams["activation"][index]]`."""
        params = jax.tree.map(lambda p: p[index], self.params)
        return eqx.combine(params, eqx.filter(self.template(), eqx.is_array, inverse=True))

    def weight_space(self, io: Literal["fixed", "permuted"] = "fixed") -> WeightSpace:
        """The zoo's weight space with fixed (true symmetry) or permuted input/output."""
        return cnn_space(self.template(), io=io)


def generate_cnn_zoo(config: ZooConfig | None = None) -> Zoo:
    """Train `config.num_networks` CNNs on scikit-learn's digits, all in one vmapped,
    jitted program; each network draws its own hyperparameters (see [`nfn.zoo.ZooConfig`][]).
    Needs scikit-learn (`pip install -e ".[zoo]"`); `config` defaults to `ZooConfig()`."""
    config = ZooConfig() if config is None else config
    x_train, y_train, x_test, y_test = load_digits_split(config.test_size, config.seed)
    key = jax.random.key(config.seed)
    hp_key, net_key, mask_key = jax.random.split(key, 3)
    hparams = sample_hparams(config, hp_key)
    n = config.num_networks
    init, train, static = make_train(config, jnp.asarray(x_train), jnp.asarray(y_train))

    # Each network's training digits: a random `train_fraction` of the training split (at
    # least one batch's worth, so every network sees data).
    scores = jax.random.uniform(mask_key, (n, len(y_train)))
    counts = np.maximum(
        np.round(hparams["train_fraction"] * len(y_train)), config.batch_size
    ).astype(np.int32)
    ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    masks = (ranks < jnp.asarray(counts)[:, None]).astype(jnp.float32)

    hp = {k: jnp.asarray(v) for k, v in hparams.items()}
    xs, ys, xt, yt = map(jnp.asarray, (x_train, y_train, x_test, y_test))

    @jax.jit
    def run(keys, hp, masks):
        states = jax.vmap(init)(keys, hp)
        states = jax.vmap(train)(states, hp, masks)
        evaluate = jax.vmap(accuracy, in_axes=(0, None, None, None, 0, 0))
        train_acc = evaluate(states.params, static, xs, ys, hp["activation"], masks)
        test_acc = evaluate(states.params, static, xt, yt, hp["activation"], None)
        return states.params, train_acc, test_acc

    start = time.perf_counter()
    params, train_acc, test_acc = jax.block_until_ready(
        run(jax.random.split(net_key, n), hp, masks)
    )
    seconds = time.perf_counter() - start
    architecture = {"in_channels": 1, "channels": config.channels, "num_classes": 10}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "activations": list(ACTIVATIONS),
        "hparams": list(HPARAMS),
        "config": dataclasses.asdict(config),
        "data": {
            "dataset": "sklearn.datasets.load_digits (pixels / 16)",
            "train_size": int(len(y_train)),
            "test_size": int(len(y_test)),
            "split_seed": config.seed,
        },
        "generation_seconds": round(seconds, 2),
    }
    template = ZooCNN(**architecture, key=jax.random.key(0))
    return Zoo(
        params=params,
        space=cnn_space(template),
        hparams=hparams,
        train_accuracy=np.asarray(train_acc),
        test_accuracy=np.asarray(test_acc),
        metadata=metadata,
    )


def _leaf_names(space: WeightSpace) -> list[str]:
    return [leaf.path for leaf in space]


def save_zoo(zoo: Zoo, path: str | os.PathLike) -> None:
    """Write `zoo` to one `.npz` file (format `nfn-cnn-zoo`, version 1).

    Entries: `metadata` (a JSON string: format, format_version, architecture, activations,
    hparams, config, data, leaves), `params/<leaf path>` (float32, network axis first, in the
    order of `metadata["leaves"]`), `hparams/<name>` (one entry per hyperparameter),
    `train_accuracy` and `test_accuracy` (float32, one per network). Loading needs no pickle.
    """
    leaves = jax.tree.leaves(zoo.params)
    names = _leaf_names(zoo.space)
    metadata = dict(zoo.metadata, leaves=names, num_networks=len(zoo))
    arrays = {"metadata": np.asarray(json.dumps(metadata))}
    arrays.update({f"params/{name}": np.asarray(x) for name, x in zip(names, leaves)})
    arrays.update({f"hparams/{k}": np.asarray(v) for k, v in zoo.hparams.items()})
    arrays["train_accuracy"] = np.asarray(zoo.train_accuracy, np.float32)
    arrays["test_accuracy"] = np.asarray(zoo.test_accuracy, np.float32)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


class ZooFormatError(ValueError):
    """A zoo file that is missing, corrupt or of another format; the message names the file."""


def load_zoo(path: str | os.PathLike) -> Zoo:
    """Read a zoo written by [`nfn.zoo.save_zoo`][].

    **Raises:** [`nfn.zoo.ZooFormatError`][] (naming the file and the entry) when the file is
    missing, not an `.npz`, truncated, of another format or version, or inconsistent.
    """
    path = os.fspath(path)

    def fail(message: str) -> ZooFormatError:
        return ZooFormatError(f"{path}: {message}")

    if not os.path.isfile(path):
        raise fail("no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise fail(f"not a readable .npz zoo file ({type(error).__name__}: {error})") from None
    if "metadata" not in arrays:
        raise fail("no 'metadata' entry (not an nfn CNN zoo)")
    try:
        metadata = json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError as error:
        raise fail(f"entry 'metadata' is not valid JSON ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise fail(f"metadata 'format' is not {FORMAT!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise fail(
            f"format_version {metadata.get('format_version')!r}; this nfn reads version "
            f"{FORMAT_VERSION}"
        )
    for field in ("architecture", "leaves", "hparams", "num_networks"):
        if field not in metadata:
            raise fail(f"metadata has no {field!r} field")
    n = metadata["num_networks"]
    try:
        template = ZooCNN(**metadata["architecture"], key=jax.random.key(0))
    except TypeError as error:
        raise fail(f"metadata 'architecture' is invalid ({error})") from None
    space = cnn_space(template)
    names = _leaf_names(space)
    if metadata["leaves"] != names:
        raise fail(f"metadata 'leaves' {metadata['leaves']} do not match the CNN's {names}")
    leaves = []
    for leaf in space:
        entry = f"params/{leaf.path}"
        if entry not in arrays:
            raise fail(f"missing entry {entry!r}")
        x = arrays[entry]
        if x.shape != (n, *leaf.array_shape):
            raise fail(f"entry {entry!r} has shape {x.shape}, expected {(n, *leaf.array_shape)}")
        leaves.append(x)
    hparams = {}
    for name in metadata["hparams"]:
        entry = f"hparams/{name}"
        if entry not in arrays or arrays[entry].shape != (n,):
            raise fail(f"entry {entry!r} is missing or not of shape ({n},)")
        hparams[name] = arrays[entry]
    accuracies = []
    for entry in ("train_accuracy", "test_accuracy"):
        if entry not in arrays or arrays[entry].shape != (n,):
            raise fail(f"entry {entry!r} is missing or not of shape ({n},)")
        accuracies.append(arrays[entry])
    metadata = {k: v for k, v in metadata.items() if k not in ("leaves", "num_networks")}
    return Zoo(
        params=space.unflatten([jnp.asarray(x) for x in leaves]),
        space=space,
        hparams=hparams,
        train_accuracy=accuracies[0],
        test_accuracy=accuracies[1],
        metadata=metadata,
    )
