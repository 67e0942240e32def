"""What the weight-space task examples share: the five models that read a network's weights,
their training (purejaxrl style: `train(key)` for one seed, vmapped over seeds, `lax.scan`
over epochs) and the metrics."""

import argparse
import dataclasses
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

import nfn

MODELS: tuple[str, ...] = ("flat MLP", "flat MLP + aug", "statistics", "UNF NP", "UNF HNP")
# `--symmetry`: UNF HNP alone, on canonicalised networks (`nfn.canonicalize`), and with random
# sign/scale symmetries as augmentation (`nfn.sample_symmetry`).
SYMMETRY_MODELS: tuple[str, ...] = ("UNF HNP", "UNF HNP + canon", "UNF HNP + sym aug")


@dataclasses.dataclass(frozen=True)
class Symmetries:
    """The sign/scale symmetry of every network of a dataset, which may differ per network (a
    zoo mixes relu and tanh CNNs): `spaces[k]` records it for the networks with `group == k`."""

    spaces: tuple[nfn.WeightSpace, ...]
    group: np.ndarray

    def canonicalize(self, params, group: np.ndarray):
        """Each of a batch of networks canonicalised under its own group's symmetry."""
        outs = [jax.vmap(lambda p, s=sp: nfn.canonicalize(s, p))(params) for sp in self.spaces]
        rows = jnp.arange(len(group))
        return jax.tree.map(lambda *xs: jnp.stack(xs)[jnp.asarray(group), rows], *outs)

    def augment(self, key: PRNGKeyArray, params, group: Array):
        """Each of a batch of networks moved by a random element of its group's symmetry."""
        keys = jax.random.split(key, group.shape[0])

        def one(k, p, g):
            draws = [nfn.sample_symmetry(space, key=k) for space in self.spaces]
            factors = {
                pid: jnp.stack([d[pid] for d in draws])[g] for pid in draws[0] if pid in draws[-1]
            }
            return nfn.apply_symmetry(self.linear, p, factors)

        return jax.vmap(one)(keys, params, group)

    @property
    def linear(self) -> nfn.WeightSpace:
        # The same axes with any nonzero factor allowed: each network's factors come from its
        # own group (values are not checked under the trace).
        records = [r for r in self.spaces[0].symmetries if r.kind != "none"]
        return self.spaces[0].with_symmetries(
            *(nfn.NeuronSymmetry(r.id, "linear", r.incoming, r.outgoing) for r in records)
        )


# `--attention` in the examples: the UNF encoders without and with a residual
# `nfn.EquivariantAttention` block after each equivariant layer (2 heads of channels / 2).
ATTENTION_MODELS: tuple[str, ...] = (
    "UNF NP",
    "UNF NP + attention",
    "UNF HNP",
    "UNF HNP + attention",
)


def add_comparison_flags(parser: argparse.ArgumentParser) -> None:
    """`--attention` and `--symmetry`, the two comparisons the examples can run instead of the
    five models (at most one at a time)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--attention",
        action="store_true",
        help="compare the UNF encoders without and with attention (other models skipped)",
    )
    group.add_argument(
        "--symmetry",
        action="store_true",
        help="compare UNF HNP plain, on canonicalised weights and with sign/scale augmentation",
    )


def leaf_scales(params: PyTree[Array]) -> list[Array]:
    """One standard deviation per leaf over a stack of training networks: dividing every leaf
    by its own scalar keeps the permutation symmetry (a per-entry standardisation would not)."""
    return [jnp.std(x) + 1e-8 for x in jax.tree.leaves(params)]


def scale_leaves(space: nfn.WeightSpace, params, scales):
    leaves = space.flatten(params, channels=False, name="params")
    return space.unflatten([x / s for x, s in zip(leaves, scales)])


def scale_like_training(space: nfn.WeightSpace, stacks: list) -> list:
    """Stacks of networks (the training stack first), every leaf divided by its `leaf_scales`
    over the training stack."""
    scales = leaf_scales(stacks[0])
    return [jax.vmap(lambda p: scale_leaves(space, p, scales))(x) for x in stacks]


class WeightModel(eqx.Module):
    """One of `MODELS`: one network's (scaled) parameters in, `out_size` numbers out. With
    `in_channels > 1` (the UNF encoders only) the input is already features of that many
    channels (e.g. the parameters next to their `nfn.ProbeFeatures`)."""

    kind: str = eqx.field(static=True)
    space: nfn.WeightSpace = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    body: eqx.Module

    def __init__(
        self,
        kind: str,
        hnp: nfn.WeightSpace,
        np_space: nfn.WeightSpace,
        out_size: int | Literal["scalar"],
        *,
        width: int = 64,
        channels: int = 16,
        in_channels: int = 1,
        key: PRNGKeyArray,
    ):
        # "+ canon", "+ sym aug" and "+ probes" change the data, not the model.
        for data_change in (" + canon", " + sym aug", " + probes + aug", " + probes"):
            kind = kind.removesuffix(data_change)
        if in_channels != 1 and kind not in ATTENTION_MODELS:
            raise ValueError(f"model {kind!r} reads parameters, not {in_channels}-channel features")
        self.kind, self.space, self.in_channels = kind, hnp, in_channels
        if kind in ("flat MLP", "flat MLP + aug"):
            self.body = eqx.nn.MLP(hnp.num_parameters, out_size, width, 2, key=key)
        elif kind == "statistics":
            size = nfn.StatisticsFeaturizer(hnp).statistics_per_leaf * hnp.num_leaves
            self.body = eqx.nn.MLP(size, out_size, width, 2, key=key)
        elif kind in ATTENTION_MODELS:
            space = np_space if kind.startswith("UNF NP") else hnp
            attention = kind.endswith("+ attention")
            # No layer norm: the weights' scale (init scale, weight decay) is informative.
            self.body = nfn.InvariantEncoder(
                space,
                out_size,
                in_channels=in_channels,
                hidden_channels=channels,
                depth=2,
                invariant_features=width,
                head_sizes=(width,),
                norm=None,
                attention_heads=2 if attention else 0,
                attention_head_size=max(channels // 2, 1),
                key=key,
            )
        else:
            raise ValueError(f"unknown model {kind!r}; one of {MODELS + ATTENTION_MODELS}")

    def __call__(self, params: PyTree[Array]) -> Float[Array, "..."]:
        if self.kind.startswith("flat"):
            leaves = self.space.flatten(params, channels=False, name="params")
            return self.body(jnp.concatenate([x.ravel() for x in leaves]))
        if self.kind == "statistics":
            return self.body(nfn.StatisticsFeaturizer(self.space)(nfn.to_features(params)))
        # UNF NP and HNP read the same arrays; only the space (which axes are tied) differs.
        return self.body(nfn.to_features(params) if self.in_channels == 1 else params)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    width: int = 64
    channels: int = 16


def _adam(grads, mu, nu, step, learning_rate):
    mu = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, mu, grads)
    nu = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g**2, nu, grads)
    t = step.astype(jnp.float32)
    scale = learning_rate * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    return jax.tree.map(lambda m, v: -scale * m / (jnp.sqrt(v) + 1e-8), mu, nu), mu, nu


def make_train(
    kind: str,
    hnp: nfn.WeightSpace,
    np_space: nfn.WeightSpace,
    out_size: int | Literal["scalar"],
    loss: Callable[[Array, Array], Array],
    n: int,
    config: TrainConfig,
    symmetries: Symmetries | None = None,
    augment_batch: Callable[[PRNGKeyArray, PyTree], PyTree] | None = None,
    in_channels: int = 1,
):
    """`train(key, x_train, y_train, x_eval) -> predictions on x_eval` for one seed of one
    model trained on `n` networks (the data are arguments, not constants folded into the
    compiled program). `"... + sym aug"` models need `symmetries` (of the training networks);
    `"... + canon"` ones expect canonicalised networks. `augment_batch(key, batch)`, if given,
    moves every training batch before anything else (any model; e.g. image transforms of
    SIRENs, `nfn.zoo.augment_siren`). `in_channels > 1`: the data are features of that many
    channels, not parameters (UNF models)."""
    steps = max(n // config.batch_size, 1)
    batch = min(config.batch_size, n)
    augment = kind == "flat MLP + aug"
    sym_augment = kind.endswith("+ sym aug")
    if sym_augment and symmetries is None:
        raise ValueError(f"model {kind!r} needs the networks' symmetries")

    def train(key: PRNGKeyArray, x_train, y_train, x_eval):
        init_key, key = jax.random.split(key)
        model = WeightModel(
            kind,
            hnp,
            np_space,
            out_size,
            width=config.width,
            channels=config.channels,
            in_channels=in_channels,
            key=init_key,
        )
        params, static = eqx.partition(model, eqx.is_inexact_array)
        zeros = jax.tree.map(jnp.zeros_like, params)

        def batch_loss(params, xb, yb, key, index):
            model = eqx.combine(params, static)
            if augment_batch is not None:
                key, batch_key = jax.random.split(key)
                xb = augment_batch(batch_key, xb)
            if sym_augment:
                group = jnp.asarray(symmetries.group)[index]
                xb = symmetries.augment(key, xb, group)
            if augment:
                # A fresh random permutation of the true symmetry for every network.
                keys = jax.random.split(key, yb.shape[0])
                perms = jax.vmap(lambda k: nfn.sample_permutation(hnp, key=k))(keys)
                xb = jax.vmap(lambda p, q: nfn.permute(hnp, p, q))(xb, perms)
            return loss(jax.vmap(model)(xb), yb)

        def epoch(carry, _):
            params, mu, nu, step, key = carry
            key, order_key = jax.random.split(key)
            order = jax.random.permutation(order_key, n)[: steps * batch].reshape(steps, batch)

            def update(carry, index):
                params, mu, nu, step, key = carry
                key, aug_key = jax.random.split(key)
                xb = jax.tree.map(lambda x: x[index], x_train)
                grads = jax.grad(batch_loss)(params, xb, y_train[index], aug_key, index)
                step = step + 1
                updates, mu, nu = _adam(grads, mu, nu, step, config.learning_rate)
                params = jax.tree.map(lambda p, u: p + u, params, updates)
                return (params, mu, nu, step, key), None

            carry, _ = jax.lax.scan(update, (params, mu, nu, step, key), order)
            return carry, None

        carry = (params, zeros, zeros, jnp.zeros((), jnp.int32), key)
        (params, *_), _ = jax.lax.scan(epoch, carry, None, length=config.epochs)
        return jax.vmap(eqx.combine(params, static))(x_eval)

    return train


def kendall_tau(prediction: np.ndarray, target: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(prediction, target).statistic)


def r_squared(prediction: np.ndarray, target: np.ndarray) -> float:
    residual = np.sum((target - prediction) ** 2)
    return float(1.0 - residual / np.sum((target - np.mean(target)) ** 2))


def table(rows: list[tuple[str, list[float]]], metric: str, seeds: list[int]) -> str:
    """A markdown table: one row per model, one column per seed, then mean and std."""
    head = f"| model | {' | '.join(f'{metric} seed {s}' for s in seeds)} | mean | std |"
    lines = [head, "|" + "---|" * (len(seeds) + 3)]
    for name, values in rows:
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {np.mean(values):.3f} | {np.std(values):.3f} |")
    return "\n".join(lines)
