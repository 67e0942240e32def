"""Predict each CNN's test accuracy from its weights: `python examples/cnn_zoo_generalization.py
[--zoo zoo/cnn_zoo.npz] [--quick] [--attention] [--seeds 3] [--figure PNG]`.

Five models read the weights (see `_weight_tasks.MODELS`): a flat MLP, the same with
permutation augmentation, the statistics baseline, and UNF encoders with all neurons permuted
(NP) and with fixed input/output (HNP, the true symmetry). Each trains with every seed in one
vmapped program on 80% of the zoo (a fixed split) and is scored on the other 20% by Kendall's
tau and R^2. Without `--zoo` the zoo file is generated first (`examples/make_cnn_zoo.py`);
`--quick` uses a small fresh zoo and short training instead (a smoke test, not a result). The
last line is `best: <model> <metric> <value>; flat MLP <value>`. `--symmetry` trains
`_weight_tasks.SYMMETRY_MODELS` instead: UNF HNP on the weights as they are, on canonicalised
weights (`nfn.canonicalize`, each CNN under its own activation's symmetry: relu scales or tanh
signs) and with random sign/scale symmetries as augmentation. `--attention` trains the two UNF
encoders without and with `nfn.EquivariantAttention` blocks instead (`_weight_tasks.
ATTENTION_MODELS`); its last line ends `; best without attention <value>`.
"""

import argparse
import time
from pathlib import Path

import _weight_tasks as tasks
import jax
import jax.numpy as jnp
import numpy as np

import nfn.zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path("zoo/cnn_zoo.npz"))
    parser.add_argument("--quick", action="store_true")
    tasks.add_comparison_flags(parser)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.quick:
        zoo = nfn.zoo.generate_cnn_zoo(nfn.zoo.ZooConfig(num_networks=128, max_epochs=2))
        config = tasks.TrainConfig(epochs=args.epochs or 3, width=32, channels=8)
    else:
        if not args.zoo.exists():
            print(f"{args.zoo} not found: generating it (examples/make_cnn_zoo.py)", flush=True)
            args.zoo.parent.mkdir(parents=True, exist_ok=True)
            nfn.zoo.save_zoo(nfn.zoo.generate_cnn_zoo(), args.zoo)
        try:
            zoo = nfn.zoo.load_zoo(args.zoo)
        except nfn.zoo.ZooFormatError as error:
            parser.error(str(error))
        config = tasks.TrainConfig(epochs=args.epochs or 100)

    n = len(zoo)
    order = np.random.default_rng(0).permutation(n)
    cut = int(0.8 * n)
    train_idx, test_idx = order[:cut], order[cut:]
    target = jnp.asarray(zoo.test_accuracy)
    hnp, np_space = zoo.weight_space("fixed"), zoo.weight_space("permuted")
    x_train = jax.tree.map(lambda x: x[train_idx], zoo.params)
    x_test = jax.tree.map(lambda x: x[test_idx], zoo.params)
    models, symmetries, canonical = tasks.MODELS, None, None
    if args.attention:
        models = tasks.ATTENTION_MODELS
    if args.symmetry:
        models = tasks.SYMMETRY_MODELS
        template = zoo.template()
        spaces = tuple(nfn.zoo.cnn_space(template, activation=a) for a in nfn.zoo.ACTIVATIONS)
        group = np.asarray(zoo.hparams["activation"])
        symmetries = tasks.Symmetries(spaces, group[train_idx])
        canonical = [
            symmetries.canonicalize(x, group[idx])
            for x, idx in ((x_train, train_idx), (x_test, test_idx))
        ]
        # Canonical weights have their own leaf scales (ReLU rows of unit norm).
        canonical = tasks.scale_like_training(hnp, canonical)
    x_train, x_test = tasks.scale_like_training(hnp, [x_train, x_test])
    y_train, y_test = target[train_idx], np.asarray(target[test_idx])

    def mse(prediction, y):
        return jnp.mean((prediction - y) ** 2)

    seeds = list(range(args.seeds))
    taus, r2s, predictions = [], [], {}
    print(f"zoo: {n} CNNs ({cut} train / {n - cut} test); epochs {config.epochs}", flush=True)
    for kind in models:
        t0 = time.perf_counter()
        train = tasks.make_train(kind, hnp, np_space, "scalar", mse, cut, config, symmetries)
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        train_seeds = jax.jit(jax.vmap(train, in_axes=(0, None, None, None)))
        inputs = canonical if kind.endswith("+ canon") else (x_train, x_test)
        pred = np.asarray(train_seeds(keys, inputs[0], y_train, inputs[1]))
        predictions[kind] = pred
        taus.append((kind, [tasks.kendall_tau(p, y_test) for p in pred]))
        r2s.append((kind, [tasks.r_squared(p, y_test) for p in pred]))
        print(f"{kind}: {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    print(tasks.table(taus, "tau", seeds))
    print()
    print(tasks.table(r2s, "R^2", seeds))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.figure is not None:
        _figure(args.figure, predictions, y_test)
    means = {kind: np.mean(values) for kind, values in taus}
    best = max(means, key=means.get)
    if args.attention:
        plain = max(v for kind, v in means.items() if "attention" not in kind)
        print(f"best: {best} tau {means[best]:.3f}; best without attention {plain:.3f}")
    else:
        reference = "UNF HNP" if args.symmetry else "flat MLP"
        print(f"best: {best} tau {means[best]:.3f}; {reference} {means[reference]:.3f}")


def _figure(path: Path, predictions: dict[str, np.ndarray], target: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(predictions)
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.6 * len(kinds), 2.8), sharey=True)
    for ax, kind in zip(axes, kinds):
        ax.scatter(target, predictions[kind][0], s=4, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("true test accuracy", fontsize=8)
    axes[0].set_ylabel("predicted (seed 0)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
