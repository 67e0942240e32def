"""Environment steps per second of whole EPVF iterations against stepping the same environments
alone, on the Ant (with the config's backend: native MuJoCo on one CPU device).

    python benchmarks/epvf_throughput.py --preset smoke|cpu|paper [--critic flat]
    python benchmarks/epvf_throughput.py --preset cpu --set num_envs=2048 critic_steps=5 \
        unf_channels=8 unf_features=32 critic_width=64 unf_layer_norm=false

Both sides are jitted and timed after compilation, `log_interval` iterations per call under
`lax.scan`, and wait (`block_until_ready`) for outputs that depend on the simulated states:

- EPVF: per iteration, perturb the policy `num_envs` times and roll every perturbation out for
  `horizon` steps, insert the pairs into the buffer, `critic_steps` critic steps and
  `policy_steps` policy steps (`EPVFTrainer.update`, with the iteration's key drawn as
  `Trainer.iteration` draws it; the state is donated and fed back, as in training). The periodic
  evaluation is left out.
- env only: the same perturbation and vmapped rollouts (`EPVFTrainer.collect`), no buffer and no
  critic; its output is the sum of the returns.

Steps are counted as simulated, `num_envs x horizon` per iteration on both sides (the rollouts
run a fixed horizon; `metrics.csv` counts only the steps before each episode ends). The critic
share is the time of the `critic_steps` critic steps alone (jitted on their own, on a filled
buffer) over the time of one fused iteration. The last line is
`epvf_steps_per_s=... env_only_steps_per_s=... ratio=...` (ratio = EPVF / env only).

Pieces jitted on their own carry their own overheads, so the critic share is an estimate. Cost:
each side runs (1 + repeats) calls of `log_interval x num_envs x horizon` steps; `smoke` takes
about a minute on 2 CPU cores with a warm compilation cache, `cpu` (2M steps a call, about
15 s a call with the native backend) about two minutes, `paper` (2e7 steps a call) needs a GPU.
"""

import dataclasses
import importlib.metadata
import json
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxlib
import tyro
from _machine import machine_line

import nfn_rl


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    preset: the Ant preset ("smoke", "cpu" or "paper") whose config is timed.
    critic: the critic (default: `nfn_rl.ant_config`'s).
    set: config fields to change, as FIELD=VALUE with a JSON value (e.g. num_envs=2048
        unf_layer_norm=false); num_envs also sets the batch and the buffer, as the recipe does.
    repeats: timed calls per function (each runs `log_interval` iterations).
    compile_cache: use the persistent XLA compilation cache (faster second runs).
    """

    preset: Literal["smoke", "cpu", "paper"] = "smoke"
    critic: Literal["flat", "probing", "probing+params", "unf", "unf+params"] = "unf+params"
    set: tuple[str, ...] = ()
    repeats: int = 3
    compile_cache: bool = True


def _epvf_iterations(trainer: nfn_rl.EPVFTrainer, state: nfn_rl.EPVFState):
    """`log_interval` EPVF iterations (Algorithm 1 without the evaluation)."""

    def iteration(state, _):
        # The update key of `Trainer.iteration`, without its evaluation branch.
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.iteration)
        update_key, _ = jax.random.split(key)
        state, metrics = trainer.update(state, update_key)
        state = dataclasses.replace(state, iteration=state.iteration + 1)
        return state, (metrics["critic_loss"], metrics["return_mean"])

    return jax.lax.scan(iteration, state, None, length=trainer.config.log_interval)


def _env_only(trainer: nfn_rl.EPVFTrainer, state: nfn_rl.EPVFState, key: jax.Array):
    """The same perturbations and rollouts, `log_interval` times; the sum of all returns."""

    def iteration(total, index):
        returns = trainer.collect(state.policy, key=jax.random.fold_in(key, index)).returns
        return total + jnp.sum(returns), None

    total, _ = jax.lax.scan(iteration, jnp.zeros(()), jnp.arange(trainer.config.log_interval))
    return total


def _timed(call, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, mean seconds of the `repeats` calls after it)."""
    start = time.perf_counter()
    jax.block_until_ready(call(-1))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(call(i))
    return first, (time.perf_counter() - start) / repeats


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(args: Args) -> None:
    if args.compile_cache:
        nfn_rl.enable_compilation_cache()
    print(machine_line())
    print(
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, mujoco {_version('mujoco')}, "
        f"mujoco-mjx {_version('mujoco-mjx')}, devices {jax.devices()}"
    )
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)
    config = nfn_rl.ant_config(args.preset, critic=args.critic, **overrides)
    print(f"config ({args.preset} preset): {config}")
    trainer = nfn_rl.make_trainer(config)
    init = eqx.filter_jit(lambda t, k: t.init(k))
    state = trainer.place(init(trainer, jax.random.key(0)))
    steps = config.log_interval * config.num_envs * trainer.env.horizon

    env_only = eqx.filter_jit(_env_only)
    env_first, env_s = _timed(
        lambda i: env_only(trainer, state, jax.random.key(i % 2**31)), args.repeats
    )
    print(
        f"env only: {env_s:.3f} s per {config.log_interval} iterations "
        f"(first call {env_first:.1f} s)"
    )

    epvf = eqx.filter_jit(_epvf_iterations, donate="all-except-first")
    # Donated states: an initial state may hold one array in two places, so each gets a copy.
    holder = {"state": jax.tree.map(jnp.copy, trainer.place(init(trainer, jax.random.key(0))))}

    def epvf_call(_):
        holder["state"], out = epvf(trainer, holder["state"])
        # The returned critic and policy depend on every simulated state through the buffer.
        return holder["state"].critic, holder["state"].policy, out

    epvf_first, epvf_s = _timed(epvf_call, args.repeats)
    print(
        f"EPVF: {epvf_s:.3f} s per {config.log_interval} iterations (first call {epvf_first:.1f} s)"
    )

    # The critic steps alone, on the buffer the timed iterations filled.
    filled = holder["state"]
    critic = eqx.filter_jit(lambda t, s, k: t.critic_update(s, key=k)[0].critic)
    critic_first, critic_s = _timed(
        lambda i: critic(trainer, filled, jax.random.key(i % 2**31)), args.repeats
    )
    iteration_s = epvf_s / config.log_interval
    print(
        f"per iteration: EPVF {1e3 * iteration_s:.1f} ms, rollouts alone "
        f"{1e3 * env_s / config.log_interval:.1f} ms, {config.critic_steps} critic steps alone "
        f"{1e3 * critic_s:.1f} ms (first call {critic_first:.1f} s); critic share "
        f"{100 * critic_s / iteration_s:.1f} %"
    )
    epvf_rate, env_rate = steps / epvf_s, steps / env_s
    print(
        f"epvf_steps_per_s={epvf_rate:.4g} env_only_steps_per_s={env_rate:.4g} "
        f"ratio={epvf_rate / env_rate:.3f}"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
