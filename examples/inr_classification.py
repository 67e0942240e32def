"""Classify digits from the weights of their implicit neural representations:
`python examples/inr_classification.py [--quick] [--data digits28|digits8] [--init
independent|shared] [--attention | --symmetry] [--seeds 3]`.

Default (`--data digits28 --init independent`, the published protocol's shape): 4,500 28x28
digits from `nfn.zoo.affine_digits` (4,000 training, 500 test images, from disjoint source
digits), one SIREN 2 -> 32 -> 32 -> 1 per image (`omega0 = 30`, SIREN initialisation, every
image from its own random initialisation; 100 full-batch Adam steps), then the models of
`INR_MODELS` below classify the digit from the SIREN's weights, and an MLP on the raw pixels
gives the ceiling. "UNF HNP + probes + aug" reads the weights next to their
`nfn.ProbeFeatures` on an 8x8 grid of probe inputs (each neuron's output and each edge's
message there), every training SIREN moved at every step by a small random rotation, zoom and
shift done exactly in weight space (`PROBE_AUGMENTATION`, `nfn.zoo.augment_siren`); the
"probe outputs" row is an MLP on the SIREN's 64 outputs at those probes alone (the function,
not the weights), the reference that shows what the weights add. `--init shared` starts
every fit from one initialisation instead.
`--bias-init zero` starts every SIREN's biases at zero (DWSNets' initialisation) instead of
Equinox's uniform default; `--augment` moves every training SIREN by a random rotation (+-45
degrees), zoom (1 +- 0.2) and shift (+-0.25 of the image's half-width) at every step, exactly in
weight space (`nfn.zoo.augment_siren`, DWSNets' INR augmentations), for every weight-space
model (the pixel MLP is not augmented; "UNF HNP + probes + aug" keeps its own moves).
`--data digits8` is the earlier setting: scikit-learn's 1,797 8x8 digits, SIRENs 2 -> 16 ->
16 -> 1 with `omega0 = 10`, 500 steps, split `nfn.zoo.load_digits_split` (497 test digits).
`--quick` fits fewer images with fewer steps (a smoke test, not a result). The last line is
`best: <model> accuracy <value>; flat MLP <value>`.
`--symmetry` trains `_weight_tasks.SYMMETRY_MODELS` instead: UNF HNP on the weights as they are,
on canonicalised weights (`nfn.canonicalize`: the sign of every hidden sine neuron fixed) and
with random sign flips as augmentation; no pixel baseline; its last line ends `; UNF HNP
<value>`. `--attention` trains the two UNF encoders without and with `nfn.EquivariantAttention`
blocks instead (the pixel MLP still runs); its last line ends `; best without attention
<value>`.
"""

import argparse
import time

import _weight_tasks as tasks
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nfn
import nfn.zoo

# The weight-space models of the INR comparison (`_weight_tasks.MODELS` and three more UNF
# variants: attention blocks, sign-canonicalised SIRENs, and probe features).
INR_MODELS: tuple[str, ...] = (
    *tasks.MODELS,
    "UNF HNP + attention",
    "UNF HNP + canon",
    "UNF HNP + probes + aug",
)
# The probe inputs of "UNF HNP + probes + aug": the pixel centres of an 8x8 image, in the
# SIRENs' coordinates; and its augmentation, milder than DWSNets' (45 degrees, 0.2, 0.25): the
# images already vary by +-15 degrees, and a digit turned by 45 degrees is a different shape.
PROBE_GRID = 8
PROBE_AUGMENTATION = dict(rotation=15.0, scale=0.1, translation=0.1)


def save_reconstructions(sirens, images, indices, path: str) -> None:
    """Images (top row) next to the images their fitted SIRENs decode to (bottom row)."""
    from matplotlib.figure import Figure

    params = eqx.filter(sirens, eqx.is_array)
    height, width = images.shape[1:]
    fig = Figure(figsize=(len(indices), 2.2))
    axes = fig.subplots(2, len(indices))
    for column, index in enumerate(indices):
        model = eqx.combine(jax.tree.map(lambda x, i=index: x[i], params), sirens)
        for row, image in enumerate((images[index], nfn.zoo.decode(model, height, width))):
            axes[row, column].imshow(np.asarray(image), cmap="gray_r", vmin=0.0, vmax=1.0)
            axes[row, column].set_axis_off()
    axes[0, 0].set_title("image", fontsize=8, loc="left")
    axes[1, 0].set_title("decoded INR", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


def load_images(data: str, quick: bool):
    """`(x_train, y_train, x_test, y_test, fit settings)` of one setting (numpy arrays)."""
    if data == "digits8":
        x_train, y_train, x_test, y_test = nfn.zoo.load_digits_split(497, 0)
        x_train, x_test = x_train[:, 0], x_test[:, 0]
        fit = dict(steps=500, learning_rate=1e-2, width=16, depth=2, omega0=10.0)
        n_train, n_test = (256, 128) if quick else (len(y_train), len(y_test))
    else:
        n_train, n_test = (200, 100) if quick else (4000, 500)
        # Quick mode draws only the images it uses: the sources and transforms of a smaller
        # set, not a prefix of the full one.
        sizes = dict(train=n_train, val=10, test=n_test) if quick else {}
        splits = nfn.zoo.affine_digits(nfn.zoo.AffineDigitsConfig(**sizes))
        (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
        fit = dict(steps=100, learning_rate=1e-2, width=32, depth=2, omega0=30.0)
    if quick:
        fit["steps"] = 30 if data == "digits28" else 100
    arrays = [np.asarray(x) for x in (x_train, y_train, x_test, y_test)]
    return arrays[0][:n_train], arrays[1][:n_train], arrays[2][:n_test], arrays[3][:n_test], fit


def probe_inputs(probe: nfn.ProbeFeatures, params, n_train: int):
    """`(training SIRENs, test features, augment_batch)` for "UNF HNP + probes + aug". The
    features are every SIREN's parameters (one channel) next to its probe features
    (`probe.channels` more), the parameters and the probe features of each leaf each divided
    by one standard deviation over the training SIRENs (one scalar per leaf and part keeps the
    permutation symmetry). The training SIRENs stay parameters: `augment_batch` moves each of a
    batch by a random `PROBE_AUGMENTATION` and only then computes its features, so that they
    are the moved network's."""

    def features(siren):
        return jax.tree.map(
            lambda w, f: jnp.concatenate([w[..., None], f], -1), siren, probe(siren)
        )

    train = jax.tree.map(lambda x: x[:n_train], params)
    reference = jax.vmap(features)(train)
    weight_scales = tasks.leaf_scales(jax.tree.map(lambda x: x[..., 0], reference))
    probe_scales = tasks.leaf_scales(jax.tree.map(lambda x: x[..., 1:], reference))
    del reference

    def scaled_features(siren):
        leaves = [
            jnp.concatenate([x[..., :1] / w, x[..., 1:] / f], -1)
            for x, w, f in zip(jax.tree.leaves(features(siren)), weight_scales, probe_scales)
        ]
        return jax.tree.unflatten(jax.tree.structure(siren), leaves)

    def augment_batch(key, batch):
        keys = jax.random.split(key, len(jax.tree.leaves(batch)[0]))
        moved = jax.vmap(
            lambda k, siren: nfn.zoo.augment_siren(siren, key=k, **PROBE_AUGMENTATION)
        )(keys, batch)
        return jax.vmap(scaled_features)(moved)

    test = jax.vmap(scaled_features)(jax.tree.map(lambda x: x[n_train:], params))
    return train, test, augment_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", choices=("digits28", "digits8"), default="digits28")
    parser.add_argument("--init", choices=("independent", "shared"), default="independent")
    parser.add_argument(
        "--bias-init",
        choices=("uniform", "zero"),
        default="uniform",
        help="the SIRENs' initial biases: Equinox's uniform default, or zero (as DWSNets')",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="move every training SIREN by a random rotation, zoom and shift at every step "
        "(nfn.zoo.augment_siren), for every weight-space model",
    )
    tasks.add_comparison_flags(parser)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--figure", type=str, default=None, help="write test images next to their decoded INRs"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    x_train, y_train, x_test, y_test, fit = load_images(args.data, args.quick)
    # Quick mode trains 20 epochs of its 200 SIRENs (60 steps), enough for the ordering of the
    # full run (a weight-space model above the flat MLP) to show.
    epochs = args.epochs or (20 if args.quick else (100 if args.data == "digits8" else 20))
    if args.quick:
        config = tasks.TrainConfig(epochs=epochs, width=32, channels=8)
    else:
        config = tasks.TrainConfig(epochs=epochs)
    images = jnp.asarray(np.concatenate([x_train, x_test]))
    height, width = images.shape[1:]
    t0 = time.perf_counter()
    sirens, errors = nfn.zoo.fit_sirens(
        images,
        shared_init=args.init == "shared",
        bias_init=args.bias_init,
        key=jax.random.key(0),
        **fit,
    )
    errors = np.asarray(errors)
    psnr = nfn.zoo.psnr(errors)
    print(
        f"fitted {len(images)} SIRENs ({height}x{width}, width {fit['width']}, omega0 "
        f"{fit['omega0']:g}, {args.init} init) in {time.perf_counter() - t0:.1f} s "
        f"({fit['steps']} steps, {args.bias_init} initial biases); reconstruction MSE median "
        f"{np.median(errors):.2e}, max "
        f"{np.max(errors):.2e}; PSNR median {np.median(psnr):.1f} dB, min {np.min(psnr):.1f} dB"
    )
    # The decoder gives back the fitted image (a check of the convention, not a metric).
    first = eqx.combine(jax.tree.map(lambda x: x[0], eqx.filter(sirens, eqx.is_array)), sirens)
    decoded = nfn.zoo.decode(first, height, width)
    print(f"decoded image 0: MSE {float(jnp.mean((decoded - images[0]) ** 2)):.2e}")
    if args.figure:
        shown = len(y_train) + np.arange(10)
        save_reconstructions(sirens, images, shown, args.figure)

    params = eqx.filter(sirens, eqx.is_array)
    template = jax.tree.map(lambda x: x[0], params)
    model0 = eqx.combine(template, sirens)
    hnp, np_space = nfn.weight_space(model0), nfn.weight_space(model0, io="permuted")
    n_train = len(y_train)
    w_train = jax.tree.map(lambda x: x[:n_train], params)
    w_test = jax.tree.map(lambda x: x[n_train:], params)
    models = INR_MODELS
    if args.attention:
        models = tasks.ATTENTION_MODELS
    if args.symmetry:
        models = tasks.SYMMETRY_MODELS
    symmetries = tasks.Symmetries((hnp,), np.zeros(n_train, int))

    def canonicalize(w):
        return symmetries.canonicalize(w, np.zeros(len(jax.tree.leaves(w)[0]), int))

    def move(key, w):
        # `--augment`: every SIREN of a stack by its own random rotation, zoom and shift.
        keys = jax.random.split(key, len(jax.tree.leaves(w)[0]))
        return jax.vmap(lambda k, p: nfn.zoo.augment_siren(p, key=k))(keys, w)

    def prepare(w_train, w_test, fix=lambda w: w):
        """The scaled stacks and, with `--augment`, the batch augmentation in scaled units
        (unscale, move, `fix`, rescale); the leaf scales come from one moved copy of the
        training stack, so the shifted first-layer biases keep a sensible scale."""
        reference = fix(move(jax.random.key(1), w_train)) if args.augment else w_train
        scales = tasks.leaf_scales(reference)
        inverse = [1.0 / x for x in scales]

        def rescale(w, factors):
            return jax.vmap(lambda p: tasks.scale_leaves(hnp, p, factors))(w)

        stacks = [rescale(w, scales) for w in (w_train, w_test)]
        if not args.augment:
            return stacks, None
        return stacks, lambda key, xb: rescale(fix(move(key, rescale(xb, inverse))), scales)

    probe = nfn.ProbeFeatures(model0, nfn.zoo.pixel_grid(PROBE_GRID, PROBE_GRID))
    probe_outputs = jax.vmap(lambda p: probe(p).layers[-1].bias[0])(params)
    with_probes = None
    if any("+ probes" in kind for kind in models):
        with_probes = probe_inputs(probe, params, n_train)
    canonical = canonical_augment = None
    if any(kind.endswith("+ canon") for kind in models):
        canonical, canonical_augment = prepare(
            canonicalize(w_train), canonicalize(w_test), canonicalize
        )
    (w_train, w_test), augment = prepare(w_train, w_test)
    labels_train, labels_test = jnp.asarray(y_train), np.asarray(y_test)

    def cross_entropy(logits, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    seeds = list(range(args.seeds))
    keys = jnp.stack([jax.random.key(s) for s in seeds])

    def run(kind, hnp, np_space, train_inputs, test_inputs, label=None, augment=None, channels=1):
        t0 = time.perf_counter()
        train = tasks.make_train(
            kind, hnp, np_space, 10, cross_entropy, n_train, config, symmetries, augment, channels
        )
        train_seeds = jax.jit(jax.vmap(train, in_axes=(0, None, None, None)))
        logits = np.asarray(train_seeds(keys, train_inputs, labels_train, test_inputs))
        print(f"{label or kind}: {time.perf_counter() - t0:.1f} s", flush=True)
        return [float(np.mean(np.argmax(z, -1) == labels_test)) for z in logits]

    rows = []
    for kind in models:
        if "+ probes" in kind:
            train_sirens, test_features, moves = with_probes
            channels = 1 + probe.channels
            rows.append(
                (kind, run(kind, hnp, np_space, train_sirens, test_features, None, moves, channels))
            )
            continue
        canon = kind.endswith("+ canon")
        inputs = canonical if canon else (w_train, w_test)
        moves = canonical_augment if canon else augment
        rows.append((kind, run(kind, hnp, np_space, *inputs, augment=moves)))
    means = {kind: np.mean(values) for kind, values in rows}
    best = max(means, key=means.get)
    if args.symmetry:
        print()
        print(tasks.table(rows, "acc", seeds))
        print(f"\ntotal {time.perf_counter() - start:.1f} s")
        print(f"best: {best} accuracy {means[best]:.3f}; UNF HNP {means['UNF HNP']:.3f}")
        return
    # The same flat MLP on the raw pixels: a "weight space" of one leaf, every axis fixed.
    pixels_train = jnp.asarray(x_train.reshape(n_train, -1))
    pixels_test = jnp.asarray(x_test.reshape(len(y_test), -1))
    pixel_space = nfn.WeightSpace.from_spec(pixels_train[0], (None,))
    label = "pixels MLP (not weights)"
    pixels = run("flat MLP", pixel_space, pixel_space, pixels_train, pixels_test, label)
    rows.append((label, pixels))
    # The function, not the weights: an MLP on the SIREN's outputs at the probes alone.
    outputs = probe_outputs / jnp.std(probe_outputs[:n_train])
    output_space = nfn.WeightSpace.from_spec(outputs[0], (None,))
    label = f"probe outputs MLP ({probe.channels} values, not weights)"
    rows.append(
        (
            label,
            run(
                "flat MLP", output_space, output_space, outputs[:n_train], outputs[n_train:], label
            ),
        )
    )
    print()
    print(tasks.table(rows, "acc", seeds))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.attention:
        plain = max(v for kind, v in means.items() if "attention" not in kind)
        print(f"best: {best} accuracy {means[best]:.3f}; best without attention {plain:.3f}")
    else:
        print(f"best: {best} accuracy {means[best]:.3f}; flat MLP {means['flat MLP']:.3f}")


if __name__ == "__main__":
    main()
