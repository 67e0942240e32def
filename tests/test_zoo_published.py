"""Loaders for published layouts, on small synthetic files written in those layouts."""

import csv
import gzip

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfn
import nfn.zoo

# The Small CNN Zoo's variables, TensorFlow shapes (4,970 parameters in all).
TF_LAYOUT = [
    ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
    ("sequential/conv2d/bias:0", (16,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_1/bias:0", (16,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)),
    ("sequential/dense/kernel:0", (16, 10)),
    ("sequential/dense/bias:0", (10,)),
]


def _write_small_cnn_zoo(directory, rows=6):
    rng = np.random.default_rng(0)
    sizes = [int(np.prod(shape)) for _, shape in TF_LAYOUT]
    assert sum(sizes) == 4970
    weights = rng.standard_normal((rows, sum(sizes))).astype(np.float32)
    np.save(directory / "weights.npy", weights)
    with open(directory / "layout.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["varname", "start_idx", "end_idx", "shape"])
        start = 0
        for (name, shape), size in zip(TF_LAYOUT, sizes):
            writer.writerow([name, start, start + size, str(shape)])
            start += size
    steps = [0, 86, 20, 86, 86, 1][:rows]
    with gzip.open(directory / "metrics.csv.gz", "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config.activation", "config.dropout", "step", "test_accuracy"])
        for i, step in enumerate(steps):
            writer.writerow(["relu", 0.1, step, 0.1 * i])
    return weights, steps


def test_small_cnn_zoo_layout(tmp_path):
    weights, steps = _write_small_cnn_zoo(tmp_path)
    params, space, metrics, accuracy = nfn.zoo.load_small_cnn_zoo(tmp_path, stride=2)
    final = [i for i, s in enumerate(steps) if s == 86]
    np.testing.assert_allclose(accuracy, [0.1 * i for i in final], rtol=1e-6)
    assert [m["config.activation"] for m in metrics] == ["relu"] * 3
    assert space.sizes == {0: 16, 1: 16, 2: 16}
    # Entry (out=o, in=c, i, j) of the second conv is TF's kernel[i, j, c, o] of that row.
    offset = 144 + 16
    tf_kernel = weights[final[1], offset : offset + 2304].reshape(3, 3, 16, 16)
    np.testing.assert_array_equal(params.convs[1].weight[1], tf_kernel.transpose(3, 2, 0, 1))
    tf_dense = weights[final[2], 4970 - 170 : 4970 - 10].reshape(16, 10)
    np.testing.assert_array_equal(params.head.weight[2], tf_dense.T)
    np.testing.assert_array_equal(params.head.bias[0], weights[final[0], -10:])
    # The loaded networks run, and their channel permutations preserve the function.
    template = nfn.zoo.PooledCNN((1, 16, 16, 16), 10, stride=2, key=jax.random.key(0))
    one = jax.tree.map(lambda x: x[0], params)
    model = eqx.combine(one, template)
    perm = nfn.sample_permutation(space, key=jax.random.key(1))
    permuted = eqx.combine(nfn.permute(space, one, perm), template)
    x = jax.random.normal(jax.random.key(2), (1, 28, 28))
    np.testing.assert_allclose(permuted(x), model(x), rtol=1e-4, atol=1e-4)
    _, _, all_rows, _ = nfn.zoo.load_small_cnn_zoo(tmp_path, step=None)
    assert len(all_rows) == 6


def test_small_cnn_zoo_errors_name_the_file(tmp_path):
    with pytest.raises(nfn.zoo.ZooFormatError, match="weights.npy: no such file"):
        nfn.zoo.load_small_cnn_zoo(tmp_path)
    weights, _ = _write_small_cnn_zoo(tmp_path)
    np.save(tmp_path / "weights.npy", weights[:4])
    with pytest.raises(nfn.zoo.ZooFormatError, match="weights.npy: shape"):
        nfn.zoo.load_small_cnn_zoo(tmp_path)
    np.save(tmp_path / "weights.npy", weights[:, :4000])
    with pytest.raises(nfn.zoo.ZooFormatError, match="layout.csv"):
        nfn.zoo.load_small_cnn_zoo(tmp_path)


def _torch_style_mlp(rng, sizes):
    state = {}
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        state[f"layers.{2 * k}.weight"] = rng.standard_normal((n_out, n_in)).astype(np.float32)
        state[f"layers.{2 * k}.bias"] = rng.standard_normal(n_out).astype(np.float32)
    return state


def test_mlp_from_state_dict_matches_a_torch_style_forward():
    rng = np.random.default_rng(1)
    state = _torch_style_mlp(rng, [5, 7, 7, 3])
    mlp, space = nfn.zoo.mlp_from_state_dict(state)
    x = rng.standard_normal(5).astype(np.float32)
    h = x
    for k in range(3):
        h = state[f"layers.{2 * k}.weight"] @ h + state[f"layers.{2 * k}.bias"]
        h = np.maximum(h, 0) if k < 2 else h
    np.testing.assert_allclose(mlp(jnp.asarray(x)), h, rtol=1e-5, atol=1e-5)
    assert space.sizes == {0: 7, 1: 7}
    bad = dict(state)
    bad["layers.2.bias"] = bad["layers.2.bias"][:3]
    with pytest.raises(ValueError, match="my.pt: layers.2.bias has shape"):
        nfn.zoo.mlp_from_state_dict(bad, name="my.pt")
    with pytest.raises(ValueError, match="neither a weight nor a bias"):
        nfn.zoo.mlp_from_state_dict({**state, "running_mean": np.zeros(3)})


def _siren_state(rng, layer_names, bounds):
    """The state dict of a SIREN 2 -> 32 -> 32 -> 1: layer k's `<layer_names[k]>.weight` and
    `.bias`, drawn uniformly within plus or minus `bounds[k]` (weight bound, bias bound)."""
    shapes = [((32, 2), 32), ((32, 32), 32), ((1, 32), 1)]
    state = {}
    for name, (weight_shape, bias_size), (weight_bound, bias_bound) in zip(
        layer_names, shapes, bounds
    ):
        weight = rng.uniform(-weight_bound, weight_bound, weight_shape)
        state[f"{name}.weight"] = weight.astype(np.float32)
        state[f"{name}.bias"] = rng.uniform(-bias_bound, bias_bound, bias_size).astype(np.float32)
    return state


def test_siren_from_state_dict_folds_omega0():
    rng = np.random.default_rng(2)
    state = _siren_state(
        rng, ("net.0.linear", "net.1.linear", "net.2"), ((0.5, 0.5), (0.01, 0.1), (0.01, 0.1))
    )
    siren, space = nfn.zoo.siren_from_state_dict(state, omega0=30.0)
    x = np.asarray([0.3, -0.7], np.float32)
    h = np.sin(30.0 * (state["net.0.linear.weight"] @ x + state["net.0.linear.bias"]))
    h = np.sin(30.0 * (state["net.1.linear.weight"] @ h + state["net.1.linear.bias"]))
    expected = state["net.2.weight"] @ h + state["net.2.bias"]
    np.testing.assert_allclose(siren(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)
    assert space.sizes == {0: 32, 1: 32}


def _dwsnets_state(rng):
    # DWSNets' INR(in_dim=2, n_layers=3, up_scale=16): seq.0 and seq.1 sine layers, seq.2 linear.
    return _siren_state(rng, ("seq.0", "seq.1", "seq.2"), ((0.5, 0.1), (0.01, 0.1), (0.1, 0.1)))


def test_dwsnets_inr_splits(tmp_path):
    import json

    rng = np.random.default_rng(3)
    states, paths = [], []
    for i in range(3):
        states.append(_dwsnets_state(rng))
        paths.append(str(tmp_path / f"inr_{i}.npz"))
        np.savez(paths[-1], **states[-1])
    splits = {
        "train": {"path": paths[:2], "label": [4, 7]},
        "test": {"path": paths[2:], "label": [1]},
    }
    (tmp_path / "splits.json").write_text(json.dumps(splits))

    def read(path):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    params, space, labels = nfn.zoo.load_inr_splits(tmp_path / "splits.json", "train", read)
    np.testing.assert_array_equal(labels, [4, 7])
    assert space.sizes == {0: 32, 1: 32}
    # SIREN 1 computes DWSNets' INR: sin(30 (W x + b)) twice, a linear layer, plus 0.5.
    state = states[1]
    x = np.asarray([0.25, -0.5], np.float32)
    h = np.sin(30.0 * (state["seq.0.weight"] @ x + state["seq.0.bias"]))
    h = np.sin(30.0 * (state["seq.1.weight"] @ h + state["seq.1.bias"]))
    expected = state["seq.2.weight"] @ h + state["seq.2.bias"] + 0.5
    template, _ = nfn.zoo.siren_from_state_dict(states[0])
    siren = eqx.combine(jax.tree.map(lambda p: p[1], params), template)
    np.testing.assert_allclose(siren(jnp.asarray(x)) + nfn.zoo.OFFSET, expected, atol=1e-4)

    with pytest.raises(nfn.zoo.ZooFormatError, match="splits.json: no split 'val'"):
        nfn.zoo.load_inr_splits(tmp_path / "splits.json", "val", read)
    bad = dict(states[0])
    bad["seq.1.weight"] = bad["seq.1.weight"][:, :16]
    np.savez(paths[1], **bad)
    with pytest.raises(nfn.zoo.ZooFormatError, match="inr_1.npz"):
        nfn.zoo.load_inr_splits(tmp_path / "splits.json", "train", read)
