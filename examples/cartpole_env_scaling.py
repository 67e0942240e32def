"""Paper Figure 1: EPVF on Cartpole with 1, 2, 4, 8, 16 parallel environments.

For each number of environments, the seeds train in one compiled program (seeds are data: the
states of all seeds are stacked and each chunk runs them one after another, with the same metrics
as separate runs) until every seed has taken `--env-steps` environment steps. The plot shows the
mean return of the perturbed policies used for data collection (the paper's metric) against
environment steps and against iterations: mean over seeds with a min-max band.

    python examples/cartpole_env_scaling.py --out runs/cartpole_env_scaling
"""

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import tyro

import nfn_rl
from nfn_rl.run._loop import init_states, run_chunk, seed_keys


@dataclasses.dataclass(frozen=True)
class Args:
    """Figure 1 of the paper.

    Attributes:
        num_envs: the environment counts to compare.
        seeds: seeds 0 .. seeds-1 per environment count (trained in one compiled program).
        env_steps: environment steps per seed.
        max_iterations: stop a setting after this many iterations even short of `env_steps`
            (bounds the time of the one-environment setting while its episodes are short).
        smoothing: iterations in the moving average of each seed's curve.
        config: every other hyperparameter (num_envs and iterations are set here).
        out: output folder for the figure and the raw curves.
    """

    num_envs: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: int = 3
    env_steps: int = 100_000
    max_iterations: int = 800
    smoothing: int = 10
    config: nfn_rl.EPVFConfig = nfn_rl.EPVFConfig()
    out: Path = Path("runs/cartpole_env_scaling")


def run_setting(args: Args, num_envs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(env steps, perturbed return mean) per seed, one row per iteration."""
    # Every episode takes at least 8 steps, which bounds the iterations needed; the buffer and
    # the policy learning rate schedule are sized by this bound.
    log_interval = args.config.log_interval
    bound = -(-args.env_steps // (8 * num_envs * log_interval)) * log_interval
    bound = min(bound, -(-args.max_iterations // log_interval) * log_interval)
    config = dataclasses.replace(args.config, num_envs=num_envs, iterations=bound)
    trainer = nfn_rl.make_trainer(config)
    states = init_states(trainer, seed_keys(list(range(args.seeds))))
    # `run_chunk` donates the states, and an initial state may hold one array in two places.
    states = jax.tree.map(jnp.copy, trainer.place(states))
    steps = np.zeros((args.seeds, 0), np.int64)
    returns = np.zeros((args.seeds, 0))
    while steps.shape[1] < bound and (steps.shape[1] == 0 or steps[:, -1].min() < args.env_steps):
        states, metrics = run_chunk(trainer, states, jnp.asarray(steps.shape[1], jnp.int32))
        total = steps[:, -1:] if steps.shape[1] else np.zeros((args.seeds, 1), np.int64)
        chunk_steps = total + np.cumsum(np.asarray(metrics["episode_steps"]), axis=1)
        steps = np.concatenate([steps, chunk_steps], axis=1)
        returns = np.concatenate([returns, np.asarray(metrics["return_mean"])], axis=1)
    return [(steps[i], returns[i]) for i in range(args.seeds)]


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return x
    padded = np.concatenate([np.full(window - 1, x[0]), x])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def main(args: Args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    grid = np.linspace(0, args.env_steps, 200)
    fig, (by_steps, by_iterations) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    raw = {}
    for num_envs in args.num_envs:
        start = time.perf_counter()
        curves = run_setting(args, num_envs)
        raw[num_envs] = [(s.tolist(), r.tolist()) for s, r in curves]
        smoothed = np.stack([smooth(r, args.smoothing) for _, r in curves])
        # Curves end where the slowest seed stopped; np.interp would extend them flat.
        x = grid[grid <= min(s[-1] for s, _ in curves)]
        on_grid = np.stack([np.interp(x, s, r) for (s, _), r in zip(curves, smoothed, strict=True)])
        (line,) = by_steps.plot(x, on_grid.mean(axis=0), label=f"{num_envs} env(s)")
        color = line.get_color()
        by_steps.fill_between(x, on_grid.min(0), on_grid.max(0), alpha=0.2, lw=0, color=color)
        iterations = np.arange(1, smoothed.shape[1] + 1)
        by_iterations.plot(iterations, smoothed.mean(0), color=color)
        by_iterations.fill_between(
            iterations, smoothed.min(0), smoothed.max(0), alpha=0.2, lw=0, color=color
        )
        print(
            f"{num_envs:2d} envs: {time.perf_counter() - start:.0f} s, {iterations[-1]} iterations,"
            f" final return {smoothed[:, -1].mean():.0f} (mean over {args.seeds} seeds)",
            flush=True,
        )
    by_steps.set_xlabel("environment steps")
    by_iterations.set_xlabel("iterations")
    by_iterations.set_xscale("log")
    by_steps.set_ylabel("return of the perturbed policies")
    fig.suptitle(f"EPVF on Cartpole, {args.seeds} seeds (mean, min-max)")
    for ax in (by_steps, by_iterations):
        ax.grid(alpha=0.3)
    by_steps.legend()
    fig.tight_layout()
    fig.savefig(args.out / "cartpole_env_scaling.png", dpi=150)
    (args.out / "curves.json").write_text(json.dumps({str(k): v for k, v in raw.items()}))
    print(f"saved {args.out / 'cartpole_env_scaling.png'}")


if __name__ == "__main__":
    nfn_rl.enable_compilation_cache()
    main(tyro.cli(Args))
