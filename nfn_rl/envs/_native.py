"""Ant episodes on MuJoCo's C engine: many deterministic MLP policies, one thread pool, on CPU.

`NativeAntRollout` computes what ``jax.vmap(episode_length_and_return)`` over an `Ant` computes, the
episode length and undiscounted return of each of ``n`` differently parameterised policies, but
steps the physics with MuJoCo's C engine (``mujoco.rollout``, float64, a persistent thread pool)
instead of MJX: on 2 CPU cores about 3x as many env steps/s for the torque Ant at 2048 envs
(``benchmarks/rollout_backends.py``; docs/epvf.md, "Native CPU rollouts", has the table). It is
host code: NumPy in, NumPy out, not jittable.

All ``n`` environments advance in lock-step. Each control step:

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

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import mujoco
import numpy as np
from jaxtyping import Bool, Float, Int, PyTree
from mujoco import rollout as mj_rollout

from nfn_rl.envs._ant import Ant, _fallen, _load_mj_model, _observation, _rotate_into_frame
from nfn_rl.envs._ant import tracking_reward as _tracking_reward
from nfn_rl.envs._batched import mlp_forward as _mlp_forward
from nfn_rl.envs._batched import mlp_layers, usable_cpus

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
_CTRL = mujoco.mjtState.mjSTATE_CTRL.value
# Below this many episodes per call the physics is too short to hide the host work behind it.
_MIN_OVERLAP_EPISODES = 64


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


class NativeAntRollout:
    """Episode lengths and returns of ``n`` deterministic MLP policies in an `Ant`, natively.

    ``NativeAntRollout(env, num_threads=None)`` copies ``env``'s variant and horizon and compiles
    the same MJCF (`nfn_rl.envs._ant._load_mj_model`); ``num_threads`` defaults to the CPUs
    this process may run on (`usable_cpus`: a scheduler's ``--cpus-per-task``, not the
    machine's count). Then ``episode_lengths_and_returns(params, policy_static)`` plays one
    episode per policy from the deterministic home reset and returns ``(lengths int32[n],
    returns float32[n])`` with the semantics of `nfn_rl._rollout.episode_length_and_return`
    (rewards after the end do not count; a step whose physics turns non-finite earns 0 and ends
    the episode; MuJoCo also appends a warning to ``MUJOCO_LOG.TXT`` in the working directory).

    A plain class, not an `equinox.Module`: it owns a native thread pool and per-thread ``MjData``
    scratch, mutable host resources that must not be traced, copied or compared as pytree leaves.
    ``drop_done=False`` keeps stepping finished episodes (as the vmapped MJX rollout does) instead
    of dropping them from the batch; the results are the same, only slower (for benchmarks).
    ``overlap=False`` makes the host wait for the physics instead of overlapping the two (two
    halves of the batch alternate, one's physics running while the other's observations and
    actions are computed); again the same results, only slower. Release the pool with `close` or
    by using it as a context manager. Thread-safe: concurrent calls (from several threads) run one
    at a time, and no physics call outlives the call that started it, even when that call
    raises or is interrupted. Results are
    deterministic for a given input, and do not depend on ``num_threads``, ``drop_done`` or
    ``overlap`` (each episode runs on one thread from a fully specified state).
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
        if num_threads is None:
            num_threads = usable_cpus()
        if num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        model, home_qpos, home_control = _load_mj_model(env.variant)
        # MuJoCo would otherwise reset a diverged simulation to qpos0; with the reset off the NaN
        # stays visible, and the episode ends as it does in MJX (rolled back, reward 0). MuJoCo
        # still reports the instability in ./MUJOCO_LOG.TXT; silencing that would take its
        # process-wide warning hook, which is not this object's to set.
        model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_AUTORESET
        self.model = model
        self.variant = env.variant
        self.horizon = env.horizon
        self.n_substeps = env.n_substeps
        self.action_scale = env.action_scale
        self.num_threads = num_threads
        self.drop_done = drop_done
        self.overlap = overlap
        # Work items per thread and control step: a few balance the threads when one is slowed
        # down (by another process) at little scheduling cost; 1 to 40 measured alike on 2 cores.
        self._chunks_per_thread = 4
        self._home_qpos32 = home_qpos.astype(np.float32)
        self._home_control32 = home_control.astype(np.float32)
        # The control a zero action produces, as in `Ant.reset`.
        self._reset_control32 = (
            self._home_control32 if self.variant == "position" else np.zeros(8, np.float32)
        )
        data = mujoco.MjData(model)
        data.qpos[:] = home_qpos
        data.ctrl[:] = home_control
        self._nstate = mujoco.mj_stateSize(model, _FULLPHYSICS)
        self._home_state = np.empty(self._nstate)
        mujoco.mj_getState(model, data, self._home_state, _FULLPHYSICS)
        self._nq, self._nv = model.nq, model.nv
        self._pool = mj_rollout.Rollout(nthread=num_threads)
        self._thread_data = [mujoco.MjData(model) for _ in range(num_threads)]
        # The one thread that issues physics calls while this one does the host work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nfn-native")
        # The pool and its per-thread MjData serve one call at a time: two at once corrupt each
        # other's physics (wrong returns, then a crash).
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the thread pool (after the call in progress, if any); the object cannot roll out
        afterwards."""
        with self._lock:
            if self._pool is not None:
                self._executor.shutdown()
                self._pool.close()
                self._pool = None

    def __enter__(self) -> "NativeAntRollout":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def episode_lengths_and_returns(
        self,
        params: PyTree,
        policy_static: PyTree,
        *,
        max_steps: int | Int[np.ndarray, " n"] | None = None,
        record: bool = False,
    ) -> (
        tuple[Int[np.ndarray, " n"], Float[np.ndarray, " n"]]
        | tuple[Int[np.ndarray, " n"], Float[np.ndarray, " n"], NativeTrajectory]
    ):
        """One episode per policy; ``(lengths, returns)``, plus a `NativeTrajectory` if ``record``.

        ``params`` holds the array leaves of ``n`` stacked `eqx.nn.MLP` policies (leading axis
        ``n``; e.g. ``eqx.partition(perturb_population(policy, n, ...), eqx.is_array)``) and
        ``policy_static`` the rest of the policy. ``max_steps`` (an int, or one per episode) ends
        episodes before the env's horizon (larger values are capped to it). Host code: call it
        outside ``jit``; JAX arrays are accepted and copied to NumPy.
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
        policy = _Policy(layers, activation, final_activation)
        lengths, returns, trajectory = self._play(num, policy, max_steps, record)
        if record:
            return lengths, returns, trajectory
        return lengths, returns

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
        return self._play(actions.shape[0], _OpenLoop(actions), actions.shape[1], True)

    def _play(
        self, num: int, policy: "_Policy | _OpenLoop", max_steps, record: bool
    ) -> tuple[np.ndarray, np.ndarray, NativeTrajectory | None]:
        with self._lock:
            if self._pool is None:
                raise RuntimeError("this NativeAntRollout has been closed")
            # Per episode; values beyond the horizon are capped to it.
            episode_limit = np.minimum(np.broadcast_to(max_steps, (num,)), self.horizon)
            limit = int(episode_limit.max())
            obs = _observation(
                self._home_state[1 : 1 + self._nq].astype(np.float32),
                np.zeros(self._nv, np.float32),
                self._reset_control32,
                self._home_qpos32,
                np,
            )
            lengths = np.zeros(num, np.int32)
            returns = np.zeros(num, np.float64)
            trajectory = None
            if record:
                trajectory = NativeTrajectory(
                    observations=np.empty((num, limit + 1, obs.size), np.float32),
                    qpos=np.empty((num, limit + 1, self._nq)),
                    rewards=np.zeros((num, limit), np.float32),
                    done=np.ones((num, limit), bool),
                )
                trajectory.observations[:, 0] = obs
                trajectory.qpos[:, 0] = self._home_state[1 : 1 + self._nq]
            groups = 2 if self.overlap and num >= _MIN_OVERLAP_EPISODES else 1
            bounds = np.linspace(0, num, groups + 1).astype(int)
            batches = [
                _EpisodeBatch(
                    self, slice(lo, hi), policy, obs, episode_limit, lengths, returns, trajectory
                )
                for lo, hi in zip(bounds[:-1], bounds[1:])
            ]
            if groups == 1:
                batch = batches[0]
                while not batch.finished_all:
                    batch.observe(self._step_physics(*batch.act()))
            else:
                self._overlapped(batches)
            return lengths, returns.astype(np.float32), trajectory

    def _overlapped(self, batches: list["_EpisodeBatch"]) -> None:
        """Step the batches in turn, each one's physics (on a helper thread) overlapping the
        previous one's observation and policy (on this thread).

        ``mujoco.rollout`` releases the GIL while it steps, so while its pool runs one batch's
        physics this thread computes the next batch's observations, rewards and actions: on 2 cores
        that host work otherwise leaves a core idle for about a third of each control step. Only one
        physics call is in flight at a time, so the pool and its per-thread ``MjData`` are used as
        in the sequential loop, and every episode gets bitwise the same numbers. When this thread
        raises (or is interrupted), it waits for the call in flight before it returns, so that
        the next call cannot race it.
        """
        ready = collections.deque((batch, batch.act()) for batch in batches)
        running = None  # (batch, future) of the physics call in flight
        try:
            while ready or running is not None:
                finished = None
                if running is not None:
                    out = running[1].result()
                    finished, running = running[0], None
                if ready:
                    batch, args = ready.popleft()
                    running = (batch, self._executor.submit(self._step_physics, *args))
                if finished is not None:
                    finished.observe(out)
                    if not finished.finished_all:
                        ready.append((finished, finished.act()))
        finally:
            while running is not None and not running[1].done():
                try:
                    concurrent.futures.wait([running[1]])
                except KeyboardInterrupt:  # one control step at most: the first one propagates
                    pass

    def _step_physics(
        self,
        start: Float[np.ndarray, "k nstate"],
        start_warm: Float[np.ndarray, "k nv"],
        ctrl: Float[np.ndarray, "k 8"],
    ) -> Float[np.ndarray, "k substeps nstate"]:
        """``n_substeps`` physics steps of ``k`` environments at constant controls, pooled."""
        out = np.empty((start.shape[0], self.n_substeps, self._nstate))
        self._pool.rollout(
            [self.model] * start.shape[0],
            self._thread_data,
            start,
            np.repeat(ctrl[:, None].astype(np.float64), self.n_substeps, axis=1),
            control_spec=_CTRL,
            skip_checks=True,
            nstep=self.n_substeps,
            initial_warmstart=start_warm,
            state=out,
            chunk_size=max(1, start.shape[0] // (self._chunks_per_thread * self.num_threads)),
        )
        return out


class _EpisodeBatch:
    """Episodes ``rows`` of one `NativeAntRollout.episode_lengths_and_returns` call, advanced in
    lock-step: `act` gives the physics inputs of the live episodes, `observe` takes its outputs.

    Writes the shared ``lengths``, ``returns`` and ``trajectory`` at ``rows`` only, so batches over
    disjoint rows can alternate. Finished episodes are dropped from the batch (their physics is no
    longer stepped and, once the live batch has halved, their policies are no longer evaluated).
    """

    def __init__(
        self,
        rollout: NativeAntRollout,
        rows: slice,
        policy: "_Policy | _OpenLoop",
        reset_obs,
        episode_limit,
        lengths,
        returns,
        trajectory,
    ):
        num = rows.stop - rows.start
        self.rollout, self.rows, self.trajectory = rollout, rows, trajectory
        self.policy = policy.take(rows)
        self.episode_limit = episode_limit[rows]
        self.lengths, self.returns = lengths[rows], returns[rows]  # views into the shared arrays
        self.state = np.tile(rollout._home_state, (num, 1))
        self.warmstart = np.zeros((num, rollout._nv))  # a fresh MjData's, as MJX's make_data
        self.obs = np.tile(reset_obs, (num, 1))
        self.finished = np.zeros(num, bool)
        self.live = np.arange(num)  # the episodes stepped: the running ones (all if not drop_done)
        self.evaluated = self.live  # the episodes whose policies `policy` holds, ⊇ `live`
        self.step = 0
        self.limit = int(self.episode_limit.max())
        self.finished_all = False

    def act(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The live episodes' physics state, solver warmstart and controls for this step."""
        rollout, live = self.rollout, self.live
        actions = self.policy(self.obs[self.evaluated], self.step)
        if self.evaluated.size != live.size:
            actions = actions[np.searchsorted(self.evaluated, live)]
        # As the MJX env's clip(nan_to_num(a), -1, 1), without nan_to_num's slow infinities.
        actions = np.clip(actions, -1.0, 1.0, out=actions)
        actions[np.isnan(actions)] = 0.0
        if rollout.variant == "position":
            self.ctrl = rollout._home_control32 + np.float32(rollout.action_scale) * actions
        else:
            self.ctrl = actions
        self.start, self.start_warm = self.state[live], self.warmstart[live]
        return self.start, self.start_warm, self.ctrl

    def observe(self, out: Float[np.ndarray, "k substeps nstate"]) -> None:
        """Take the physics' output for the step `act` prepared; update returns and the batch."""
        rollout, live, step = self.rollout, self.live, self.step
        start, start_warm, ctrl = self.start, self.start_warm, self.ctrl
        nq, nv = rollout._nq, rollout._nv
        new = out[:, -1]
        # rollout() takes the solver's warmstart but does not return it. It is the last qacc,
        # which the Euler step (eulerdamp off) turned into qvel += timestep * qacc, so it is
        # recovered from the last two velocities (to float64 rounding).
        before = out[:, -2] if rollout.n_substeps > 1 else start
        qvel_slice = slice(1 + nq, 1 + nq + nv)
        qacc = (new[:, qvel_slice] - before[:, qvel_slice]) / rollout.model.opt.timestep
        finite = np.isfinite(new).all(axis=1) & np.isfinite(qacc).all(axis=1)
        if not finite.all():
            # Keep the last finite physics, as the MJX env does.
            new = np.where(finite[:, None], new, start)
            qacc = np.where(finite[:, None], qacc, start_warm)

        qpos = new[:, 1 : 1 + nq].astype(np.float32)
        qvel = new[:, qvel_slice].astype(np.float32)
        velocity = _rotate_into_frame(qpos[:, 3:7], qvel[:, 0:3], np)
        reward = np.where(finite, _tracking_reward(velocity[:, :2], np), np.float32(0.0))
        done = _fallen(qpos[:, 2]) | ~finite | (step + 1 >= self.episode_limit[live])

        self.state[live], self.warmstart[live] = new, qacc
        running = ~self.finished[live]
        counted = live[running]
        self.obs[live] = _observation(qpos, qvel, ctrl, rollout._home_qpos32, np, velocity)
        self.lengths[counted] += 1
        self.returns[counted] += reward[running]
        self.finished[counted] |= done[running]
        if self.trajectory is not None:
            self._record(step, counted, reward[running], done[running], new[running, 1 : 1 + nq])
        self.step = step + 1
        if self.finished.all() or self.step >= self.limit:
            self.finished_all = True
            if self.trajectory is not None:
                self._record_tail()
            return
        if not rollout.drop_done:
            return
        self.live = live[~done]
        # Re-gathering the parameters costs a copy of them; doing it only when the live batch
        # has halved bounds the wasted policy evaluations to the same factor of two.
        if 2 * self.live.size <= self.evaluated.size:
            self.policy = self.policy.take(np.searchsorted(self.evaluated, self.live))
            self.evaluated = self.live

    def _record(self, step, counted, reward, done, qpos) -> None:
        trajectory, rows = self.trajectory, self.rows
        trajectory.rewards[rows][counted, step] = reward
        trajectory.done[rows][counted, step] = done
        observations, positions = trajectory.observations[rows], trajectory.qpos[rows]
        observations[:, step + 1] = observations[:, step]
        observations[counted, step + 1] = self.obs[counted]
        positions[:, step + 1] = positions[:, step]
        positions[counted, step + 1] = qpos

    def _record_tail(self) -> None:
        """Steps never taken (every episode ended early) repeat the final observations."""
        step = self.step
        for array in (self.trajectory.observations[self.rows], self.trajectory.qpos[self.rows]):
            array[:, step + 1 :] = array[:, step : step + 1]


class _Policy:
    """``k`` stacked MLPs (NumPy float32 layers): each one's action at its observation."""

    def __init__(self, layers, activation: Callable, final_activation: Callable):
        self.layers, self.activation, self.final_activation = layers, activation, final_activation

    def take(self, index: slice | Int[np.ndarray, " m"]) -> "_Policy":
        layers = [(w[index], None if b is None else b[index]) for w, b in self.layers]
        return _Policy(layers, self.activation, self.final_activation)

    def __call__(self, obs: Float[np.ndarray, "k 34"], step: int) -> Float[np.ndarray, "k 8"]:
        return _mlp_forward(self.layers, self.activation, self.final_activation, obs)


class _OpenLoop:
    """``k`` fixed action sequences: the action at each step, whatever the observation."""

    def __init__(self, actions: Float[np.ndarray, "k steps 8"]):
        self.actions = actions

    def take(self, index: slice | Int[np.ndarray, " m"]) -> "_OpenLoop":
        return _OpenLoop(self.actions[index])

    def __call__(self, obs: Float[np.ndarray, "k 34"], step: int) -> Float[np.ndarray, "k 8"]:
        return self.actions[:, step].copy()  # the caller clips it in place


def _unpack_policy(
    params: PyTree, policy_static: PyTree
) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], Callable, Callable, int]:
    """The layers of ``n`` stacked MLPs as NumPy float32 arrays, checked; ValueError otherwise."""
    return mlp_layers(params, policy_static, 34, 8)
