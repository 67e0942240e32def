"""Loaders for published weight-space data layouts, and a converter from PyTorch-style state
dicts; none of them needs torch.

Layouts and where they were checked (the files themselves are not downloaded by `nfn`):

- Unterthiner et al.'s Small CNN Zoo ("Predicting Neural Network Accuracy from Weights",
  google-research `dnn_predict_accuracy`): a directory with `weights.npy` (one row of 4,970
  flattened parameters per checkpoint), `metrics.csv.gz` (one row per checkpoint; columns
  include `step` and `test_accuracy`, and `config.*` hyperparameters) and `layout.csv`
  (columns `varname`, `start_idx`, `end_idx`, `shape`: where each TensorFlow variable sits in
  a row, with TF shapes: conv kernels `(kh, kw, in, out)`, dense kernels `(in, out)`).
  Checked against the dataset README and the NFN authors' reader (`ZooDataset` in
  AllanYangZhou/nfn, `experiments/data_utils.py`), which selects final checkpoints by
  `step == 86` and moves kernels to `(out, in, kh, kw)` / `(out, in)`.
- SIRENs as written by the NFN authors' `Siren` (AllanYangZhou/nfn,
  `experiments/siren_utils.py`): state-dict names `net.<k>.linear.weight/bias` for sine
  layers (computing `sin(omega0 * (W x + b))`) and `net.<last>.weight/bias` for the final
  linear layer, torch `(out, in)` layout. [`nfn.zoo.siren_from_state_dict`][] folds `omega0`
  into the sine layers to match `nfn.zoo`'s convention. How a whole INR data set is packed
  into files: DWSNets (AvivNavon/DWSNets, `experiments/data.py` and `nn/inr.py`) lists one
  torch state dict per INR in a splits JSON `{split: {"path": [...], "label": [...]}}`; its
  `INR` names layers `seq.<k>.weight/bias`, uses `omega0 = 30` in every sine layer, a final
  linear layer and an output offset of 0.5. [`nfn.zoo.load_inr_splits`][] reads that layout
  given a function that reads one state dict (`torch.load`). The NFN authors' packaging of
  their INR sets was not checked.
"""

import ast
import csv
import gzip
import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from nfn._derive import weight_space
from nfn._spec import WeightSpace
from nfn.zoo._cnn import with_activation_symmetry
from nfn.zoo._format import ZooFormatError


class PooledCNN(eqx.Module):
    """`[conv -> act] x k -> global average pool -> linear`, e.g. the Small CNN Zoo's
    architecture (3 convolutions of 16 channels)."""

    convs: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.Linear

    def __init__(
        self,
        channels: tuple[int, ...],
        num_classes: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        padding: str | int = "SAME",
        key: PRNGKeyArray,
    ):
        keys = jax.random.split(key, len(channels))
        self.convs = tuple(
            eqx.nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, key=k)
            for c_in, c_out, k in zip(channels[:-1], channels[1:], keys[:-1])
        )
        self.head = eqx.nn.Linear(channels[-1], num_classes, key=keys[-1])

    def __call__(
        self, x: Float[Array, "c h w"], *, activation=jax.nn.relu
    ) -> Float[Array, " classes"]:
        for conv in self.convs:
            x = activation(conv(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def _describe_pooled(model: PooledCNN) -> eqx.nn.Sequential:
    # Global average pooling acts on each channel alone: the last conv's channels and the
    # head's inputs share an id (see nfn.zoo.cnn_space).
    layers: list[Any] = []
    for conv in model.convs:
        layers += [conv, eqx.nn.Lambda(jax.nn.relu)]
    return eqx.nn.Sequential([*layers, eqx.nn.AdaptiveAvgPool2d(1), model.head])


def pooled_cnn_space(
    model: PooledCNN, *, io: str = "fixed", activation: str | None = None
) -> WeightSpace:
    """The weight space of a [`nfn.zoo.PooledCNN`][]. As for [`nfn.zoo.cnn_space`][], the
    hidden channels' sign or scale symmetry is recorded only for a given `activation`
    (`"relu"` or `"tanh"`)."""
    space = weight_space(model, io=io, hooks={PooledCNN: _describe_pooled})
    return with_activation_symmetry(space, activation)


def _read_csv(path: str) -> list[dict[str, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def load_small_cnn_zoo(
    directory: str | os.PathLike,
    *,
    step: int | None = 86,
    stride: int = 1,
    padding: str | int = "SAME",
) -> tuple[Any, WeightSpace, list[dict[str, str]], np.ndarray]:
    """Read the Small CNN Zoo layout (`weights.npy`, `metrics.csv.gz` or `metrics.csv`,
    `layout.csv`) from `directory`.

    Returns `(params, space, metrics, test_accuracy)`: the parameters of a
    [`nfn.zoo.PooledCNN`][] stacked over the selected rows (Equinox layout), its weight space,
    the metrics rows (all columns, as strings) and their `test_accuracy` as floats. `step`
    selects checkpoints (86: end of training; `None`: every row). The convolutions' `stride`
    and `padding` are not stored in the files (Equinox keeps them in the pytree's structure,
    so they are needed to combine the params with a model): pass those of the zoo's
    networks.

    **Raises:** [`nfn.zoo.ZooFormatError`][] naming the file for a missing file, a missing
    column, or shapes that disagree.
    """
    directory = os.fspath(directory)
    paths = {
        "weights": os.path.join(directory, "weights.npy"),
        "layout": os.path.join(directory, "layout.csv"),
    }
    metrics_path = os.path.join(directory, "metrics.csv.gz")
    if not os.path.exists(metrics_path):
        metrics_path = os.path.join(directory, "metrics.csv")
    paths["metrics"] = metrics_path
    for path in paths.values():
        if not os.path.isfile(path):
            raise ZooFormatError(f"{path}: no such file (Small CNN Zoo layout)")
    try:
        weights = np.load(paths["weights"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ZooFormatError(f"{paths['weights']}: not a readable .npy ({error})") from None
    try:
        layout = _read_csv(paths["layout"])
        metrics = _read_csv(paths["metrics"])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ZooFormatError(f"{directory}: unreadable csv ({error})") from None
    for path, rows, columns in (
        (paths["layout"], layout, ("varname", "start_idx", "end_idx", "shape")),
        (paths["metrics"], metrics, ("test_accuracy",) + (("step",) if step is not None else ())),
    ):
        if not rows or any(c not in rows[0] for c in columns):
            raise ZooFormatError(f"{path}: needs the columns {columns}")
    if weights.ndim != 2 or weights.shape[0] != len(metrics):
        raise ZooFormatError(
            f"{paths['weights']}: shape {weights.shape}, expected ({len(metrics)}, params) "
            f"(one row per row of {os.path.basename(paths['metrics'])})"
        )
    rows = [i for i, r in enumerate(metrics) if step is None or int(float(r["step"])) == step]
    data = np.asarray(weights[rows], dtype=np.float32)
    kernels, biases = [], []
    for entry in layout:
        start, end = int(entry["start_idx"]), int(entry["end_idx"])
        try:
            shape = tuple(ast.literal_eval(entry["shape"]))
        except (ValueError, SyntaxError):
            raise ZooFormatError(f"{paths['layout']}: bad shape {entry['shape']!r}") from None
        if end - start != int(np.prod(shape)) or end > data.shape[1]:
            raise ZooFormatError(
                f"{paths['layout']}: {entry['varname']} spans {start}:{end}, not {shape}"
            )
        x = data[:, start:end].reshape(len(rows), *shape)
        if entry["varname"].endswith("kernel:0"):
            # TensorFlow (kh, kw, in, out) and (in, out) to Equinox (out, in, kh, kw), (out, in).
            x = x.transpose(0, 4, 3, 1, 2) if x.ndim == 5 else x.transpose(0, 2, 1)
            kernels.append(x)
        elif entry["varname"].endswith("bias:0"):
            biases.append(x)
        else:
            raise ZooFormatError(f"{paths['layout']}: unknown variable {entry['varname']!r}")
    if len(kernels) != len(biases) or len(kernels) < 2 or kernels[-1].ndim != 3:
        raise ZooFormatError(f"{paths['layout']}: expected conv kernels then one dense layer")
    channels = (kernels[0].shape[2], *(k.shape[1] for k in kernels[:-1]))
    model = PooledCNN(
        channels,
        kernels[-1].shape[1],
        kernel_size=kernels[0].shape[-1],
        stride=stride,
        padding=padding,
        key=jax.random.key(0),
    )
    params = eqx.filter(model, eqx.is_array)
    leaves = []
    for kernel, bias in zip(kernels[:-1], biases[:-1]):
        leaves += [jnp.asarray(kernel), jnp.asarray(bias.reshape(len(rows), -1, 1, 1))]
    leaves += [jnp.asarray(kernels[-1]), jnp.asarray(biases[-1])]
    expected = [x.shape for x in jax.tree.leaves(params)]
    if [x.shape[1:] for x in leaves] != expected:
        raise ZooFormatError(f"{paths['layout']}: shapes do not form a pooled CNN")
    params = jax.tree.unflatten(jax.tree.structure(params), leaves)
    accuracy = np.asarray([float(metrics[i]["test_accuracy"]) for i in rows], np.float32)
    return params, pooled_cnn_space(model), [metrics[i] for i in rows], accuracy


def mlp_from_state_dict(
    state_dict: Mapping[str, Any], *, activation=jax.nn.relu, name: str = "state_dict"
) -> tuple[eqx.nn.MLP, WeightSpace]:
    """An `eqx.nn.MLP` (and its weight space) from a PyTorch-style state dict of an MLP:
    `{name: array}` with `...weight` `(out, in)` and `...bias` `(out,)` entries, layers in the
    dict's order (as `torch.nn.Module.state_dict()` lists them). Arrays may be numpy arrays or
    anything `np.asarray` reads (a torch tensor on the CPU), so torch is not needed.

    **Raises:** `ValueError` naming `name` and the entry for a missing bias, a shape that does
    not chain, or an entry that is neither a weight nor a bias.
    """
    weights, biases = [], []
    for key, value in state_dict.items():
        array = np.asarray(value, dtype=np.float32)
        if key.endswith("weight"):
            if array.ndim != 2:
                raise ValueError(f"{name}: {key} has shape {array.shape}, not (out, in)")
            weights.append((key, array))
        elif key.endswith("bias"):
            biases.append((key, array))
        else:
            raise ValueError(f"{name}: entry {key!r} is neither a weight nor a bias")
    if not weights or len(biases) != len(weights):
        raise ValueError(f"{name}: needs one bias per weight, got {len(weights)} weights")
    for (wk, w), (bk, b), nxt in zip(weights, biases, [*weights[1:], None]):
        if b.shape != (w.shape[0],):
            raise ValueError(f"{name}: {bk} has shape {b.shape}, expected ({w.shape[0]},)")
        if nxt is not None and nxt[1].shape[1] != w.shape[0]:
            raise ValueError(
                f"{name}: {nxt[0]} takes {nxt[1].shape[1]} inputs, {wk} gives {w.shape[0]}"
            )
    widths = {w.shape[0] for _, w in weights[:-1]}
    if len(widths) > 1:
        raise ValueError(f"{name}: eqx.nn.MLP needs equal hidden widths, got {sorted(widths)}")
    width = widths.pop() if widths else weights[0][1].shape[1]
    mlp = eqx.nn.MLP(
        weights[0][1].shape[1],
        weights[-1][1].shape[0],
        width,
        len(weights) - 1,
        activation=activation,
        key=jax.random.key(0),
    )
    mlp = eqx.tree_at(
        lambda m: [x for layer in m.layers for x in (layer.weight, layer.bias)],
        mlp,
        [jnp.asarray(x) for (_, w), (_, b) in zip(weights, biases) for x in (w, b)],
    )
    return mlp, weight_space(mlp)


def siren_from_state_dict(
    state_dict: Mapping[str, Any], *, omega0: float = 30.0, name: str = "state_dict"
) -> tuple[eqx.nn.MLP, WeightSpace]:
    """A SIREN in `nfn.zoo`'s convention (`omega0` folded into the weights, `jnp.sin`
    activations) from a PyTorch-style SIREN state dict whose layers compute
    `sin(omega0 * (W x + b))` except the last, which is linear: the NFN authors' `Siren`
    (`net.<k>.linear.weight/bias`, then `net.<last>.weight/bias`) and DWSNets' `INR`
    (`seq.<k>.weight/bias`), both with `omega0 = 30` by default. Layers are taken in the
    dict's order; every layer but the last gets `omega0` folded in. DWSNets' `INR` adds 0.5 to
    its output, as `nfn.zoo.decode` does; the NFN authors' `Siren` adds nothing."""
    arrays = [(key, np.asarray(value, dtype=np.float32)) for key, value in state_dict.items()]
    weight_keys = [key for key, _ in arrays if key.endswith("weight")]
    if not weight_keys:
        raise ValueError(f"{name}: no weight entries")
    last = weight_keys[-1].rsplit(".", 1)[0]
    folded = {
        key: array if key.rsplit(".", 1)[0] == last else array * omega0 for key, array in arrays
    }
    return mlp_from_state_dict(folded, activation=jnp.sin, name=name)


def load_inr_splits(
    path: str | os.PathLike,
    split: str,
    read_state_dict: Callable[[str], Mapping[str, Any]],
    *,
    omega0: float = 30.0,
    limit: int | None = None,
) -> tuple[Any, WeightSpace, np.ndarray]:
    """Read a DWSNets-style INR data set: a JSON file `{split: {"path": [...], "label": [...]}}`
    listing one SIREN state dict per file (as DWSNets' `generate_data_splits.py` writes it).

    The state dicts are torch `.pth` files, which only torch reads: pass
    `read_state_dict=torch.load` (or any function from a path to `{name: array}`), so `nfn`
    itself does not need torch. Returns the SIRENs' arrays stacked on a leading axis (in
    `nfn.zoo`'s convention, see [`nfn.zoo.siren_from_state_dict`][]), their weight space and
    the labels. `limit` reads only the first `limit` entries.

    **Raises:** [`nfn.zoo.ZooFormatError`][] naming the JSON file for a missing file, split or
    field, or naming the state dict's file for one that does not match the first one's shapes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ZooFormatError(f"{path}: no such file (INR splits JSON)")
    try:
        with open(path) as f:
            splits = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ZooFormatError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(splits, dict) or split not in splits:
        found = list(splits) if isinstance(splits, dict) else type(splits).__name__
        raise ZooFormatError(f"{path}: no split {split!r} (found {found})")
    entry = splits[split]
    if not isinstance(entry, dict) or "path" not in entry or "label" not in entry:
        raise ZooFormatError(f"{path}: split {split!r} needs 'path' and 'label' lists")
    if len(entry["path"]) != len(entry["label"]):
        raise ZooFormatError(f"{path}: split {split!r} has unequal 'path' and 'label' lists")
    files = entry["path"][:limit]
    leaves, space = [], None
    for file in files:
        try:
            mlp, this = siren_from_state_dict(read_state_dict(file), omega0=omega0, name=file)
        except ValueError as error:
            raise ZooFormatError(str(error)) from None
        if space is None:
            space = this
        elif this != space:
            raise ZooFormatError(f"{file}: shapes differ from {files[0]}")
        leaves.append(jax.tree.leaves(eqx.filter(mlp, eqx.is_array)))
    if space is None:
        raise ZooFormatError(f"{path}: split {split!r} is empty")
    stacked = [jnp.stack(column) for column in zip(*leaves)]
    labels = np.asarray([int(label) for label in entry["label"][:limit]])
    return space.unflatten(stacked), space, labels
