"""Ant episodes on MuJoCo's C engine: many deterministic MLP policies, one thread pool, on CPU.

`NativeAntRollout` computes what ``jax.vmap(episode_length_and_return)`` over an `Ant` computes, the
episode length and undiscounted return of each of ``n`` differently parameterised policies, but
steps the physics with MuJoCo's C engine (``mujoco.rollout``, float64, a persistent thread pool)
instead of MJX: on 2 CPU cores about 3x as many env steps/s for the torque Ant at 2048 envs
(``benchmarks/rollout_backends.py``; docs/epvf.md, "Native CPU rollouts", has the table). It is
host code: NumPy in, NumPy out, not jittable.

All ``n`` environments advance in lock-step, in the loop of `nfn_rl.envs._batched` that the
Gymnasium tasks share (the Ant is its `BatchedTask`). Each control step:

1. the actions of all live policies, a batched matmul per layer in NumPy float32. NumPy, not a
   jitted ``jax.vmap`` of the policy: on 2 cores they take about the same time (2048 policies:
   0.53 vs 0.55 ms for (32, 32) hidden layers, 2.3 vs 1.8 ms for (64, 64)), and NumPy needs no
   compilation for the shrinking batches that dropping finished episodes produces;
2. one ``Rollout.rollout`` call that advances every live environment ``env.n_substeps`` physics
   steps at that control;
3. observation, reward and termination with the very functions the MJX env uses
   (`nfn_rl.envs._ant` writes them once for ``jax.numpy`` and ``numpy``), in float32 like MJX.

Finished episodes are dropped from the batch (their physics is no longer stepped and, once the live
batch has halved, their policies are no longer evaluated). From 64 episodes on, the batch is split
in two halves that alternate, so that one half's physics (2) runs on the pool while this thread
computes the other half's observations and actions (3, then 1): ``mujoco.rollout`` releases the
GIL, and on 2 cores the host work otherwise leaves a core idle for about a third of each control
step (2048 torque-Ant episodes, horizon 100: 587 instead of 664 ms; without the overlap the
physics takes 66% of the time, the actions 17% and the observations and rewards 17%).

Why the numbers differ from MJX: the Ant's MJCF asks for a single Newton iteration of the
constraint solver, and MJX (float32) and the C engine (float64) compute that one unconverged step
differently (with the solver run to convergence they agree closely). The trajectories agree for
the first steps and then drift apart chaotically, so single returns differ while their
distribution over many policies agrees (tests/test_native_rollout.py states the measured
tolerances).
"""

from collections.abc import Callable

import equinox as eqx
import mujoco
import numpy as np
from jaxtyping import Bool, Float, Int, PyTree

from nfn_rl.envs._ant import Ant, _fallen, _load_mj_model, _observation, _rotate_into_frame
from nfn_rl.envs._ant import tracking_reward as _tracking_reward
from nfn_rl.envs._batched import BatchedTask, MLPActor, OpenLoopActor, PhysicsPool, mlp_layers


class NativeTrajectory(eqx.Module):
    """Per-step record of `NativeAntRollout.episode_lengths_and_returns` (``record=True``).

    ``observations[:, t]`` is the observation the policy acted on at step ``t`` (index 0: the reset
    observation), ``rewards[:, t]`` and ``done[:, t]`` are those of the transition out of it, as in
    ``env.step``. After an episode has ended its observation is frozen, its reward 0 and ``done``
    True.
    """

    observations: Float[np.ndarray, "n steps_plus_one 34"]
    qpos: Float[np.ndarray, "n steps_plus_one 15"]
    """The physics' positions after each step (index 0: the reset), frozen after the end: what
    `nfn_rl.envs.save_episode_animation` renders."""
    rewards: Float[np.ndarray, "n steps"]
    done: Bool[np.ndarray, "n steps"]


class _AntTask(BatchedTask):
    """An `Ant`'s controls, observation, reward and termination, in float32 like MJX's, with the
    very functions the MJX env uses."""

    def __init__(self, env: Ant):
        model, home_qpos, home_control = _load_mj_model(env.variant)
        # MuJoCo would otherwise reset a diverged simulation to qpos0; with the reset off the NaN
        # stays visible, and the episode ends as it does in MJX (rolled back, reward 0). MuJoCo
        # still reports the instability in ./MUJOCO_LOG.TXT; silencing that would take its
        # process-wide warning hook, which is not this object's to set.
        model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_AUTORESET
        self.model = model
        self.frame_skip = env.n_substeps
        self.observation_size = env.observation_size
        self.action_size = env.action_size
        self.position = env.variant == "position"
        self.action_scale = np.float32(env.action_scale)
        self.home_qpos = home_qpos
        self.home_qpos32 = home_qpos.astype(np.float32)
        self.home_control32 = home_control.astype(np.float32)
        # The control a zero action produces, as in `Ant.reset`.
        self.reset_control32 = (
            self.home_control32 if self.position else np.zeros(env.action_size, np.float32)
        )

    def controls(self, actions):
        # `actions` are clipped already (by the actor or `open_loop_episodes`).
        return self.home_control32 + self.action_scale * actions if self.position else actions

    def observation(self, qpos, qvel):
        control = np.broadcast_to(self.reset_control32, (qpos.shape[0], self.action_size))
        qpos32, qvel32 = qpos.astype(np.float32), qvel.astype(np.float32)
        return _observation(qpos32, qvel32, control, self.home_qpos32, np)

    def transition(self, before, after, controls):
        nq, nv = self.model.nq, self.model.nv
        qpos = after[:, 1 : 1 + nq].astype(np.float32)
        qvel = after[:, 1 + nq : 1 + nq + nv].astype(np.float32)
        velocity = _rotate_into_frame(qpos[:, 3:7], qvel[:, 0:3], np)
        obs = _observation(qpos, qvel, controls, self.home_qpos32, np, velocity)
        return obs, _tracking_reward(velocity[:, :2], np), _fallen(qpos[:, 2])


class NativeAntRollout(PhysicsPool):
    """Episode lengths and returns of ``n`` deterministic MLP policies in an `Ant`, natively.

    ``NativeAntRollout(env, num_threads=None)`` copies ``env``'s variant and horizon and compiles
    the same MJCF (`nfn_rl.envs._ant._load_mj_model`); ``num_threads`` defaults to the CPUs
    this process may run on (`usable_cpus`: a scheduler's ``--cpus-per-task``, not the
    machine's count). Then ``episode_lengths_and_returns(params, policy_static)`` plays one
    episode per policy from the deterministic home reset and returns ``(lengths int32[n],
    returns float32[n])`` with the semantics of `nfn_rl._rollout.episode_length_and_return`
    (rewards after the end do not count; a step whose physics turns non-finite earns 0 and ends
    the episode; MuJoCo also appends a warning to ``MUJOCO_LOG.TXT`` in the working directory).

    A `PhysicsPool` for the Ant: a plain class, not an `equinox.Module`, since it owns a native
    thread pool and per-thread ``MjData`` scratch, mutable host resources that must not be traced,
    copied or compared as pytree leaves. ``drop_done=False`` keeps stepping finished episodes (as
    the vmapped MJX rollout does) instead of dropping them from the batch; the results are the
    same, only slower (for benchmarks). ``overlap=False`` makes the host wait for the physics
    instead of overlapping the two (two halves of the batch alternate, one's physics running while
    the other's observations and actions are computed); again the same results, only slower.
    Release the pool with `close` or by using it as a context manager. Thread-safe: concurrent
    calls (from several threads) run one at a time, and no physics call outlives the call that
    started it, even when that call raises or is interrupted. Results are deterministic for a
    given input, and do not depend on ``num_threads``, ``drop_done`` or ``overlap`` (each episode
    runs on one thread from a fully specified state).
    """

    def __init__(
        self,
        env: Ant,
        num_threads: int | None = None,
        *,
        drop_done: bool = True,
        overlap: bool = True,
    ):
        if not isinstance(env, Ant):
            raise TypeError(f"NativeAntRollout needs an Ant env, got {type(env).__name__}")
        task = _AntTask(env)
        super().__init__(task, num_threads, drop_done=drop_done, overlap=overlap)
        self.model = task.model
        self.variant = env.variant
        self.horizon = env.horizon
        self.n_substeps = env.n_substeps
        self.action_scale = env.action_scale
        self._home_state = self.states(task.home_qpos[None], np.zeros((1, self.nv)))[0]

    def episode_lengths_and_returns(
        self,
        params: PyTree,
        policy_static: PyTree,
        *,
        max_steps: int | Int[np.ndarray, " n"] | None = None,
        record: bool = False,
        moments: bool = False,
    ) -> tuple[np.ndarray | NativeTrajectory, ...]:
        """One episode per policy: ``(lengths, returns)``, then ``(obs_sum, obs_sq_sum)`` if
        ``moments``, then a `NativeTrajectory` if ``record``.

        ``params`` holds the array leaves of ``n`` stacked `eqx.nn.MLP` policies (leading axis
        ``n``; e.g. ``eqx.partition(perturb_population(policy, n, ...), eqx.is_array)``) and
        ``policy_static`` the rest of the policy. ``max_steps`` (an int, or one per episode) ends
        episodes before the env's horizon (larger values are capped to it). ``obs_sum`` and
        ``obs_sq_sum`` (float64, shape ``(n, 34)``) sum each episode's observations over the
        steps its length counts (the reset observation included, the one after the final step
        excluded) and their squares: ``obs_sum / lengths[:, None]`` is its mean observation. Host
        code: call it outside ``jit``; JAX arrays are accepted and copied to NumPy.
        """
        layers, activation, final_activation, num = _unpack_policy(params, policy_static)
        if max_steps is None:
            max_steps = self.horizon
        if np.ndim(max_steps) not in (0, 1) or np.size(max_steps) not in (1, num):
            raise ValueError(
                f"max_steps must be an int or have shape ({num},), got shape {np.shape(max_steps)}"
            )
        if np.min(max_steps) < 1:
            raise ValueError(f"max_steps must be positive, got {np.min(max_steps)}")
        actor = MLPActor(layers, activation, final_activation)
        return self._ant_play(actor, num, max_steps, record, moments)

    def open_loop_episodes(
        self, actions: Float[np.ndarray, "n steps 8"]
    ) -> tuple[Int[np.ndarray, " n"], Float[np.ndarray, " n"], NativeTrajectory]:
        """One recorded episode per row of ``actions``, which gives the action at each step
        whatever the observation (``steps`` at most the horizon): ``(lengths, returns,
        trajectory)`` as `episode_lengths_and_returns` with ``record=True``."""
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 3 or actions.shape[2] != 8 or not 1 <= actions.shape[1] <= self.horizon:
            raise ValueError(
                f"actions must have shape (n, steps, 8) with 1 <= steps <= {self.horizon}, got "
                f"shape {actions.shape}"
            )
        # As the MJX env's clip(nan_to_num(a), -1, 1), without nan_to_num's slow infinities.
        actions = np.clip(actions, -1.0, 1.0)
        actions[np.isnan(actions)] = 0.0
        actor = OpenLoopActor(actions)
        return self._ant_play(actor, actions.shape[0], actions.shape[1], True, False)

    def _ant_play(self, actor, num: int, max_steps, record: bool, moments: bool) -> tuple:
        """`PhysicsPool.play` from the home reset, episodes capped to the horizon, in the
        Ant's types: float32 returns and rewards, a `NativeTrajectory`."""
        start = np.tile(self._home_state, (num, 1))
        limit = np.minimum(np.broadcast_to(max_steps, (num,)), self.horizon)
        outcome = self._play(actor, start, limit, record, moments)
        outcome.returns = outcome.returns.astype(np.float32)
        if record:
            trajectory = outcome.trajectory
            outcome.trajectory = NativeTrajectory(
                observations=trajectory.observations,
                qpos=trajectory.qpos,
                rewards=trajectory.rewards.astype(np.float32),
                done=trajectory.done,
            )
        return outcome.results()


def _unpack_policy(
    params: PyTree, policy_static: PyTree
) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], Callable, Callable, int]:
    """The layers of ``n`` stacked MLPs as NumPy float32 arrays, checked; ValueError otherwise."""
    return mlp_layers(params, policy_static, 34, 8)
