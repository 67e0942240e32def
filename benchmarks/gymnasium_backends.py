"""Gymnasium's MuJoCo tasks per backend: env steps/s natively batched against Gymnasium's loop.

    python benchmarks/gymnasium_backends.py [--envs 2048] [--gym-envs 64] [--horizon 200]

For each task with a native version, the same perturbed (32, 32) tanh policies play one episode
each from Gymnasium's reset of their seed:

- native: `nfn_rl.envs.NativeGymnasiumRollout` over ``envs`` policies at once (MuJoCo's C engine
  on the thread pool, observations, rewards and the policies' forward pass batched in NumPy);
- gymnasium: `nfn_rl.envs.GymnasiumVectorRollout`, a Python loop of ``env.step`` over Gymnasium's
  envs (``gymnasium.vector.SyncVectorEnv``) in this process, with the same batched NumPy forward
  pass, over the first ``gym_envs`` policies. A Python loop's steps/s does not depend on how many
  envs it loops over, so fewer keep the benchmark short.

Steps are the env steps actually taken (episodes end when a task terminates them). "ratio" is
the native/Gymnasium steps/s ratio; the last line is the smallest one. "ceiling" is what no
batching can exceed: the physics alone (``frame_skip`` substeps of ``mujoco.rollout`` per env
step, timed in CPU seconds on one thread) on every thread of the pool, over Gymnasium's steps/s.
Where Gymnasium's loop is mostly physics (Swimmer, HalfCheetah), the ceiling is a few times, not
ten. On a shared machine the wall-clock columns depend on the other processes' load (printed
before and after).
"""

import dataclasses
import os
import time

import equinox as eqx
import jax
import mujoco
import numpy as np
import tyro
from mujoco import rollout as mj_rollout

from nfn_rl import make_policy, perturb_population
from nfn_rl.envs import (
    NATIVE_GYMNASIUM_TASKS,
    GymnasiumEnv,
    GymnasiumVectorRollout,
    NativeGymnasiumRollout,
)


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    envs: native episodes per call.
    gym_envs: episodes of the Gymnasium loop.
    horizon: steps per episode at most.
    tasks: Gymnasium ids (default: every native task).
    """

    envs: int = 2048
    gym_envs: int = 64
    horizon: int = 200
    tasks: tuple[str, ...] = tuple(NATIVE_GYMNASIUM_TASKS)


def _steps_per_second(host, params, static, seeds, horizon) -> float:
    start = time.perf_counter()
    lengths, _ = host.episode_lengths_and_returns(params, static, seeds, horizon)
    return float(np.sum(lengths)) / (time.perf_counter() - start)


def _physics_steps_per_cpu_second(task, episodes: int = 256, repeats: int = 20) -> float:
    """Env steps per CPU second of ``mujoco.rollout`` alone on one thread (zero controls)."""
    model = task.model
    state = np.empty(mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS))
    mujoco.mj_getState(model, mujoco.MjData(model), state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    starts = np.tile(state, (episodes, 1))
    controls = np.zeros((episodes, task.frame_skip, model.nu))
    with mj_rollout.Rollout(nthread=1) as pool:
        start = time.process_time()
        for _ in range(repeats):
            pool.rollout(
                [model] * episodes,
                [mujoco.MjData(model)],
                starts,
                controls,
                control_spec=mujoco.mjtState.mjSTATE_CTRL.value,
                skip_checks=True,
                nstep=task.frame_skip,
            )
        return episodes * repeats / (time.process_time() - start)


def main(args: Args) -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'task':<26}{'native steps/s':>16}{'gym steps/s':>14}{'ratio':>9}{'ceiling':>10}")
    ratios = []
    for env_id in args.tasks:
        env = GymnasiumEnv(env_id, backend="native")
        policy = make_policy(env, 32, 2, key=jax.random.key(0))
        population = perturb_population(policy, args.envs, key=jax.random.key(1), scale=0.3)
        params, static = eqx.partition(population, eqx.is_array)
        params = jax.tree.map(np.asarray, params)
        seeds = list(range(args.envs))
        native = NativeGymnasiumRollout(env_id)
        _steps_per_second(native, params, static, seeds, args.horizon)  # warm-up
        native_rate = _steps_per_second(native, params, static, seeds, args.horizon)
        ceiling = native.pool.num_threads * _physics_steps_per_cpu_second(native.task)
        native.close()
        gym = GymnasiumVectorRollout(env_id, args.horizon)
        few = jax.tree.map(lambda x: x[: args.gym_envs], params)
        gym_rate = _steps_per_second(gym, few, static, seeds[: args.gym_envs], args.horizon)
        gym.close()
        ratios.append(native_rate / gym_rate)
        print(
            f"{env_id:<26}{native_rate:>16,.0f}{gym_rate:>14,.0f}{ratios[-1]:>8.1f}x"
            f"{ceiling / gym_rate:>9.1f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"smallest native/gymnasium env steps/s ratio at {args.envs} envs: {min(ratios):.1f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))
