"""How much signal each policy-gradient estimator finds in one population: ES's weighted mean
against the ridge regressions an EPVF critic can fit.

    python benchmarks/gradient_estimators.py [--run runs/ant_epvf_unf] [--populations 4]

Around one policy it draws ``--populations`` independent populations of the `cpu` preset
(2048 antithetic perturbations U(-0.3|w|, 0.3|w|) of the torque Ant, horizon 200), rolls each
out once (native backend), and estimates the return's gradient from each population alone:

- ``es_ranks``: OpenAI-ES, the perturbations weighted by the centred ranks of their returns
  (`nfn_rl.population.es_gradient`); ``es_standardized`` with standardised returns instead;
- ``ridge_<targets>:<penalty>``: the weights of a ridge regression of the targets on the
  parameters (`nfn_rl.epvf.ridge_head`'s solve and penalty convention), which is what a linear
  EPVF critic's gradient is; a large penalty gives back the ES direction.

For each it prints the mean cosine between the estimates of two independent populations (how
reproducible the direction is) and the held-out Spearman correlation between a population's
predicted improvement (perturbation . estimate) and the returns of every *other* population: the
signal a critic trained on one batch carries to the next. ``pooled-2`` rows fit two populations
together (what a buffer of two iterations would give). The last line is
``best held-out spearman: <estimator> X.XXX; es_ranks Y.YYY``.
"""

import dataclasses
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro
from _machine import machine_line
from jax.flatten_util import ravel_pytree

import nfn_rl
from nfn_rl import baselines
from nfn_rl.population import centered_ranks, es_gradient


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    run: a run directory whose trained policy is measured (default: seed 0's initial policy).
    populations: independent populations drawn around the policy (at least 3).
    penalties: ridge penalties (relative to the parameters' mean variance).
    noise_scale: s of the perturbations U(-s|w|, s|w|) (the preset's 0.3 by default): smaller
        values show whether the return is a smoother function of the parameters closer in.
    """

    run: Path | None = None
    populations: int = 4
    penalties: tuple[float, ...] = (0.01, 0.1, 0.3, 1.0, 10.0, 100.0)
    noise_scale: float | None = None


def _ranks(y: np.ndarray) -> np.ndarray:
    return np.asarray(centered_ranks(jnp.asarray(y), jnp.ones(len(y), bool)))


def _standardized(y: np.ndarray) -> np.ndarray:
    return (y - y.mean()) / max(y.std(), 1e-12)


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge weights in the dual (fewer policies than parameters), intercept unpenalised."""
    xc, yc = x - x.mean(0), y - y.mean()
    lam = penalty * np.sum(xc**2) / x.shape[1]
    return xc.T @ np.linalg.solve(xc @ xc.T + lam * np.eye(len(y)), yc)


def _estimate(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if name == "es_ranks":
        return np.asarray(
            es_gradient(jnp.asarray(x), jnp.asarray(_ranks(y)), jnp.ones(len(y), bool))
        )
    if name == "es_standardized":
        return x.T @ _standardized(y) / len(y)
    kind, penalty = name.split(":")
    targets = _ranks(y) if kind == "ridge_ranks" else _standardized(y)
    return _ridge(x, targets, float(penalty))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def main(args: Args) -> None:
    print(machine_line())
    if args.populations < 3:
        raise SystemExit("--populations must be at least 3")
    config = baselines.baseline_config("es", "cpu")
    if args.noise_scale is not None:
        config = dataclasses.replace(config, noise_scale=args.noise_scale)
    trainer = nfn_rl.make_trainer(config)
    if args.run is None:
        state = eqx.filter_jit(trainer.init)(jax.random.key(0))
        which = "seed 0's initial policy"
    else:
        _, state, _ = nfn_rl.load_run(args.run)
        which = f"the trained policy of {args.run}"
    collect = eqx.filter_jit(lambda t, p, k: t.collect(p, key=k))
    centre = ravel_pytree(jax.tree.map(lambda x: x[0], state.policy))[0]
    populations = []
    start = time.perf_counter()
    for i in range(args.populations):
        population = collect(trainer, state.policy, jax.random.key(100 + i))
        returns = population.returns
        deltas = jax.vmap(lambda p: ravel_pytree(p)[0])(population.params) - centre
        populations.append((np.asarray(deltas, np.float64), np.asarray(returns, np.float64)))
    returns = populations[0][1]
    print(
        f"{which}: {args.populations} populations of {config.num_envs} "
        f"(noise U(-{config.noise_scale:g}|w|, {config.noise_scale:g}|w|)) in "
        f"{time.perf_counter() - start:.0f} s; returns mean {returns.mean():.3f}, "
        f"std {returns.std():.3f}"
    )
    names = ["es_ranks", "es_standardized"]
    names += [f"ridge_ranks:{p:g}" for p in args.penalties]
    names += [f"ridge_standardized:{p:g}" for p in args.penalties]
    held_out = {}
    count = len(populations)
    for name in names:
        estimates = [_estimate(name, x, y) for x, y in populations]
        units = [g / np.linalg.norm(g) for g in estimates]
        cosines = [units[i] @ units[j] for i in range(count) for j in range(i + 1, count)]
        spearmans = [
            _spearman(populations[j][0] @ estimates[i], populations[j][1])
            for i in range(count)
            for j in range(count)
            if i != j
        ]
        held_out[name] = float(np.mean(spearmans))
        print(
            f"{name:24s} cosine across populations {np.mean(cosines):.3f}   "
            f"held-out spearman {held_out[name]:.4f}"
        )
    pooled_x = np.concatenate([populations[0][0], populations[1][0]])
    pooled_y = np.concatenate([populations[0][1], populations[1][1]])
    for name in ["es_ranks"] + [f"ridge_ranks:{p:g}" for p in args.penalties]:
        estimate = _estimate(name, pooled_x, pooled_y)
        spearman = np.mean([_spearman(x @ estimate, y) for x, y in populations[2:]])
        print(f"pooled-2 {name:15s} held-out spearman {spearman:.4f}")
    best = max(held_out, key=held_out.get)
    print(
        f"best held-out spearman: {best} {held_out[best]:.3f}; es_ranks {held_out['es_ranks']:.3f}"
    )


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    main(tyro.cli(Args))
