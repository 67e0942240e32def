"""Gymnasium's MuJoCo v5 tasks, batched on MuJoCo's C engine with `nfn_rl.envs._batched`.

Each task loads the MJCF file the installed ``gymnasium`` package ships and computes what
``gymnasium/envs/mujoco/<task>_v5.py`` computes with its default arguments: the observation, the
reward (forward velocity over ``dt = timestep * frame_skip``, control cost, healthy reward), the
termination (healthy ranges), the frame skip and the reset noise, in float64 NumPy over a batch.
Gymnasium's own loop does not clip actions (MuJoCo clamps the controls to their range, the control
cost sees the action as given), and neither do these tasks.

Reset noise: `NativeGymnasiumRollout.reset` draws it with the generator Gymnasium's
``env.reset(seed=seed)`` seeds, in the same order, so a seed gives bitwise the same initial state
as Gymnasium's.
"""

import os
import warnings
from collections.abc import Sequence

import gymnasium
import mujoco
import numpy as np
from jaxtyping import Bool, Float, PyTree

from nfn_rl.envs._batched import (
    Actor,
    BatchedTask,
    HostResource,
    PhysicsPool,
    Trajectory,
    unpack_mlp,
)

_ASSETS = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets")


def _load_model(path: str) -> mujoco.MjModel:
    """The compiled model of one of Gymnasium's MJCF files, as `MjModel.from_xml_path` compiles
    it, without MuJoCo's warnings about the file: MuJoCo 4.0.1 deprecates `settotalmass`
    (half_cheetah.xml sets it), and the file is Gymnasium's, which a user cannot change.
    `from_xml_path` prints MuJoCo's warnings from C; `MjSpec.compile` raises them as Python
    warnings, which can be filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="compiler attribute 'settotalmass'")
        return mujoco.MjSpec.from_file(path).compile()


class GymnasiumTask(BatchedTask):
    """A Gymnasium MuJoCo v5 task with its default arguments, vectorised over a batch.

    Attributes set by each task: ``env_id``, ``xml`` (the file in Gymnasium's assets),
    ``frame_skip``, ``reset_noise_scale`` and ``qvel_noise`` ("uniform" or "normal").
    """

    env_id: str
    xml: str
    reset_noise_scale: float
    qvel_noise: str = "uniform"

    def __init__(self):
        self.model = _load_model(os.path.join(_ASSETS, self.xml))
        self.dt = self.model.opt.timestep * self.frame_skip
        self.init_qpos = self.model.qpos0.copy()
        self.init_qvel = np.zeros(self.model.nv)
        low, high = self.model.actuator_ctrlrange.astype(np.float32).T
        self.action_low, self.action_high = low, high
        self.action_size = self.model.nu
        nq, nv = self.model.nq, self.model.nv
        self.observation_size = self.observation(np.zeros((1, nq)), np.zeros((1, nv))).shape[1]

    def controls(self, actions):
        # Gymnasium's actions as given: MuJoCo clamps them to the control range, and `transition`'s
        # control cost sees them unclamped.
        return actions

    def reset_noise(self, seed: int) -> tuple[Float[np.ndarray, " nq"], Float[np.ndarray, " nv"]]:
        """``(qpos, qvel)`` of Gymnasium's ``reset(seed=seed)``: its generator, its draws."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
        scale = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        if self.qvel_noise == "normal":
            qvel = self.init_qvel + scale * rng.standard_normal(self.model.nv)
        else:
            qvel = self.init_qvel + rng.uniform(low=-scale, high=scale, size=self.model.nv)
        return qpos, qvel

    def _split(self, state):
        nq, nv = self.model.nq, self.model.nv
        return state[:, 1 : 1 + nq], state[:, 1 + nq : 1 + nq + nv]

    def control_cost(self, weight: float, controls: Float[np.ndarray, "k act"]):
        # As Gymnasium's `weight * np.sum(np.square(action))` on its float32 actions: float32.
        controls = np.asarray(controls, np.float32)
        return np.float32(weight) * np.sum(np.square(controls), axis=1)


class InvertedPendulum(GymnasiumTask):
    """InvertedPendulum-v5: reward 1 per step until the pole leaves |angle| <= 0.2."""

    env_id = "InvertedPendulum-v5"
    xml = "inverted_pendulum.xml"
    frame_skip = 2
    reset_noise_scale = 0.01

    def observation(self, qpos, qvel):
        return np.concatenate([qpos, qvel], axis=1)

    def transition(self, before, after, controls):
        obs = self.observation(*self._split(after))
        terminated = ~np.isfinite(obs).all(axis=1) | (np.abs(obs[:, 1]) > 0.2)
        return obs, (~terminated).astype(np.float64), terminated


class _Locomotion(GymnasiumTask):
    """The planar runners and the swimmer: forward velocity of the root minus a control cost,
    plus a healthy reward and termination where the task has healthy ranges."""

    excluded_positions: int = 1
    clip_velocity: bool = False
    ctrl_cost_weight: float
    healthy_reward: float = 0.0
    healthy_z_range: tuple[float, float] | None = None
    healthy_angle_range: tuple[float, float] | None = None
    healthy_state_range: tuple[float, float] | None = None

    def observation(self, qpos, qvel):
        if self.clip_velocity:
            qvel = np.clip(qvel, -10, 10)
        return np.concatenate([qpos[:, self.excluded_positions :], qvel], axis=1)

    def healthy(self, qpos, qvel) -> Bool[np.ndarray, " k"]:
        z, angle = qpos[:, 1], qpos[:, 2]
        (min_z, max_z), (min_angle, max_angle) = self.healthy_z_range, self.healthy_angle_range
        healthy = (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)
        if self.healthy_state_range is not None:
            low, high = self.healthy_state_range
            state = np.concatenate([qpos, qvel], axis=1)[:, 2:]
            healthy &= ((low < state) & (state < high)).all(axis=1)
        return healthy

    def transition(self, before, after, controls):
        qpos, qvel = self._split(after)
        # Gymnasium's `(forward + healthy) - cost`, summed in that order.
        reward = (qpos[:, 0] - before[:, 1]) / self.dt
        terminated = np.zeros(qpos.shape[0], bool)
        if self.healthy_z_range is not None:
            healthy = self.healthy(qpos, qvel)
            reward = reward + healthy * self.healthy_reward
            terminated = ~healthy
        reward = reward - self.control_cost(self.ctrl_cost_weight, controls)
        return self.observation(qpos, qvel), reward, terminated


class Swimmer(_Locomotion):
    """Swimmer-v5: forward velocity minus 1e-4 |a|^2; never terminates."""

    env_id = "Swimmer-v5"
    xml = "swimmer.xml"
    frame_skip = 4
    reset_noise_scale = 0.1
    excluded_positions = 2
    ctrl_cost_weight = 1e-4


class HalfCheetah(_Locomotion):
    """HalfCheetah-v5: forward velocity minus 0.1 |a|^2; never terminates."""

    env_id = "HalfCheetah-v5"
    xml = "half_cheetah.xml"
    frame_skip = 5
    reset_noise_scale = 0.1
    qvel_noise = "normal"
    ctrl_cost_weight = 0.1


class Hopper(_Locomotion):
    """Hopper-v5: forward velocity + 1 while healthy - 1e-3 |a|^2; ends when unhealthy."""

    env_id = "Hopper-v5"
    xml = "hopper.xml"
    frame_skip = 4
    reset_noise_scale = 5e-3
    clip_velocity = True
    ctrl_cost_weight = 1e-3
    healthy_reward = 1.0
    healthy_z_range = (0.7, float("inf"))
    healthy_angle_range = (-0.2, 0.2)
    healthy_state_range = (-100.0, 100.0)


class Walker2d(_Locomotion):
    """Walker2d-v5: forward velocity + 1 while healthy - 1e-3 |a|^2; ends when unhealthy."""

    env_id = "Walker2d-v5"
    xml = "walker2d_v5.xml"
    frame_skip = 4
    reset_noise_scale = 5e-3
    clip_velocity = True
    ctrl_cost_weight = 1e-3
    healthy_reward = 1.0
    healthy_z_range = (0.8, 2.0)
    healthy_angle_range = (-1.0, 1.0)


NATIVE_GYMNASIUM_TASKS: dict[str, type[GymnasiumTask]] = {
    task.env_id: task for task in (InvertedPendulum, Swimmer, HalfCheetah, Hopper, Walker2d)
}
"""The Gymnasium ids with a native batched version."""


class NativeGymnasiumRollout(HostResource):
    """Episodes of a native `GymnasiumTask` for ``n`` MLP policies at once, on one `PhysicsPool`.

    ``NativeGymnasiumRollout("Swimmer-v5", num_threads=None)``. Host code: NumPy in, NumPy out.
    A policy's output in [-1, 1] is mapped affinely onto the action space (``centre + half_range *
    output``; the identity on [-1, 1]).
    """

    def __init__(self, env_id: str, num_threads: int | None = None, *, overlap: bool = True):
        if env_id not in NATIVE_GYMNASIUM_TASKS:
            native = ", ".join(sorted(NATIVE_GYMNASIUM_TASKS))
            raise ValueError(f"no native version of {env_id!r}; native: {native}")
        self.env_id = env_id
        self.task = NATIVE_GYMNASIUM_TASKS[env_id]()
        self.pool = PhysicsPool(self.task, num_threads, overlap=overlap)
        self._centre = (self.task.action_high + self.task.action_low) / 2
        self._half_range = (self.task.action_high - self.task.action_low) / 2

    def close(self) -> None:
        """Stop the thread pool; no episodes after."""
        self.pool.close()

    def reset_states(self, seeds: Sequence[int]) -> Float[np.ndarray, "n nstate"]:
        """The physics states Gymnasium's ``reset(seed=s)`` starts from, one per seed."""
        pairs = [self.task.reset_noise(int(seed)) for seed in seeds]
        return self.pool.states(np.stack([q for q, _ in pairs]), np.stack([v for _, v in pairs]))

    def episode_lengths_and_returns(
        self,
        params: PyTree,
        policy_static: PyTree,
        seeds: Sequence[int],
        horizon: int,
        *,
        record: bool = False,
        moments: bool = False,
    ) -> tuple[np.ndarray | Trajectory, ...]:
        """One episode per policy, each from the reset of its seed: ``(lengths, returns)``
        (float64 returns, the undiscounted sum of Gymnasium's rewards), then ``(obs_sum,
        obs_sq_sum)`` if ``moments``, then a `Trajectory` if ``record``.

        ``obs_sum`` and ``obs_sq_sum`` (float64, shape ``(n, observation_size)``) sum each
        episode's observations over the steps its length counts (the reset observation included,
        the one after the final step excluded) and their squares: ``obs_sum / lengths[:, None]``
        is its mean observation (`PhysicsPool.play`)."""
        task = self.task
        actor, num = unpack_mlp(params, policy_static, task.observation_size, task.action_size)
        if len(seeds) != num:
            raise ValueError(f"got {len(seeds)} seeds for {num} policies")
        return self.pool.play(
            _ScaledActor(actor, self._centre, self._half_range),
            self.reset_states(seeds),
            horizon,
            record=record,
            moments=moments,
        )


class _ScaledActor(Actor):
    """An actor's [-1, 1] outputs mapped onto the action space, in float32 like Gymnasium's."""

    def __init__(self, actor, centre, half_range):
        self.actor, self.centre, self.half_range = actor, centre, half_range
        self.identity = bool(np.all(centre == 0) and np.all(half_range == 1))

    def rows(self, rows):
        return _ScaledActor(self.actor.rows(rows), self.centre, self.half_range)

    def __call__(self, obs, live, step):
        out = self.actor(obs, live, step)
        return out if self.identity else self.centre + self.half_range * out
