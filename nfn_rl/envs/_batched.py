"""Batched MuJoCo episodes on the host for any task: one thread pool, many closed-loop policies.

The machinery of `nfn_rl.envs.NativeAntRollout` and `nfn_rl.envs.NativeGymnasiumRollout`,
written once for any MuJoCo task: a task says how its actions become controls and how a
transition's physics becomes an observation, a reward and a termination flag (`BatchedTask`);
`PhysicsPool` steps ``k`` environments ``frame_skip`` physics steps at once with
``mujoco.rollout`` on a persistent thread pool; `EpisodeBatch` advances the episodes of a batch
of policies in lock-step, drops finished ones, and with two batches the physics of one (on the
pool, without the GIL) overlaps the host work of the other.
"""

import abc
import collections
import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from jaxtyping import Bool, Float, Int, PyTree
from mujoco import rollout as mj_rollout

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
_CTRL = mujoco.mjtState.mjSTATE_CTRL.value
# Below this many episodes per call the physics is too short to hide the host work behind it.
MIN_OVERLAP_EPISODES = 64


class BatchedTask(abc.ABC):
    """What a MuJoCo task adds to the shared machinery: its model and its transition.

    Subclasses set ``model``, ``frame_skip``, ``observation_size`` and ``action_size`` and
    implement `controls`, `observation` and `transition`, vectorised over a batch of environments
    in NumPy.
    """

    model: mujoco.MjModel
    frame_skip: int
    observation_size: int
    action_size: int

    @abc.abstractmethod
    def controls(self, actions: Float[np.ndarray, "k act"]) -> Float[np.ndarray, "k nu"]:
        """The MuJoCo controls that ``actions`` (the actors' output) apply."""

    @abc.abstractmethod
    def observation(
        self, qpos: Float[np.ndarray, "k nq"], qvel: Float[np.ndarray, "k nv"]
    ) -> Float[np.ndarray, "k obs"]:
        """The observation of each state (the reset observation too)."""

    @abc.abstractmethod
    def transition(
        self,
        before: Float[np.ndarray, "k nstate"],
        after: Float[np.ndarray, "k nstate"],
        controls: Float[np.ndarray, "k nu"],
    ) -> tuple[Float[np.ndarray, "k obs"], Float[np.ndarray, " k"], Bool[np.ndarray, " k"]]:
        """Observation, reward and termination of the control step from ``before`` to ``after``
        (full physics states) under ``controls`` (what `controls` made of the actions)."""


class Trajectory(eqx.Module):
    """Per-step record of a batch of episodes (`PhysicsPool.play` with ``record=True``).

    ``observations[:, t]`` is the observation the actor acted on at step ``t`` (index 0: the reset
    observation), ``rewards[:, t]`` and ``terminated[:, t]`` those of the transition out of it,
    and ``done[:, t]`` whether the episode ended there (terminated or truncated). After an episode
    has ended its observation is frozen, its reward 0 and ``done`` True.
    """

    observations: Float[np.ndarray, "n steps_plus_one obs"]
    qpos: Float[np.ndarray, "n steps_plus_one nq"]
    rewards: Float[np.ndarray, "n steps"]
    terminated: Bool[np.ndarray, "n steps"]
    done: Bool[np.ndarray, "n steps"]


@dataclasses.dataclass
class _Outcome:
    """What one `PhysicsPool.play` call fills in, row by row: ``moments`` (the sums of the
    observations acted on and of their squares) and ``trajectory`` only where asked for."""

    lengths: Int[np.ndarray, " n"]
    returns: Float[np.ndarray, " n"]
    moments: tuple[Float[np.ndarray, "n obs"], Float[np.ndarray, "n obs"]] | None
    trajectory: Trajectory | None

    def results(self) -> tuple:
        """``(lengths, returns)``, then the two moments if asked for, then the trajectory if
        recorded."""
        moments = () if self.moments is None else self.moments
        trajectory = () if self.trajectory is None else (self.trajectory,)
        return (self.lengths, self.returns, *moments, *trajectory)


class HostResource(abc.ABC):
    """A host object that holds threads or native resources until `close`; leaving a `with`
    block closes it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the resources; no episodes after."""

    def __enter__(self) -> "HostResource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PhysicsPool(HostResource):
    """``mujoco.rollout``'s thread pool for one task's model, and the episodes it plays.

    A plain class, not an `equinox.Module`: it owns a native thread pool and per-thread ``MjData``
    scratch, mutable host resources that must not be traced, copied or compared as pytree leaves.
    ``num_threads`` defaults to `usable_cpus`. ``drop_done=False`` keeps stepping finished
    episodes instead of dropping them from the batch, and ``overlap=False`` makes the host wait for
    the physics instead of overlapping the two: the same results, only slower (for benchmarks).
    Release the pool with `close` or by using it as a context manager. Calls from several threads
    (JAX may run the host callbacks of several devices at once) take turns: the pool and its
    per-thread ``MjData`` serve one call at a time (two at once corrupt each other's physics), and
    no physics call outlives the call that started it, even when that call raises or is
    interrupted. Results are deterministic for a given input and do not depend on
    ``num_threads``, ``drop_done`` or ``overlap`` (each episode runs on one thread from a fully
    specified state).
    """

    def __init__(
        self,
        task: BatchedTask,
        num_threads: int | None = None,
        *,
        drop_done: bool = True,
        overlap: bool = True,
    ):
        if num_threads is None:
            num_threads = usable_cpus()
        if num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        self.task = task
        self.num_threads = num_threads
        self.drop_done = drop_done
        self.overlap = overlap
        model = task.model
        self.nstate = mujoco.mj_stateSize(model, _FULLPHYSICS)
        self.nq, self.nv = model.nq, model.nv
        data = mujoco.MjData(model)
        self.reset_state = np.empty(self.nstate)
        mujoco.mj_getState(model, data, self.reset_state, _FULLPHYSICS)
        # Work items per thread and control step: a few balance the threads when one is slowed
        # down (by another process) at little scheduling cost; 1 to 40 measured alike on 2 cores.
        self._chunks_per_thread = 4
        self._pool = mj_rollout.Rollout(nthread=num_threads)
        self._thread_data = [mujoco.MjData(model) for _ in range(num_threads)]
        # The one thread that issues physics calls while this one does the host work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nfn-native")
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the thread pool (after the call in progress); the object cannot roll out
        afterwards."""
        with self._lock:
            if self._pool is not None:
                self._executor.shutdown()
                self._pool.close()
                self._pool = None

    def states(
        self, qpos: Float[np.ndarray, "n nq"], qvel: Float[np.ndarray, "n nv"]
    ) -> Float[np.ndarray, "n nstate"]:
        """Full physics states of a freshly reset ``MjData`` with these positions and velocities
        (what ``mj_resetData`` then writing ``qpos`` and ``qvel`` leaves)."""
        states = np.tile(self.reset_state, (qpos.shape[0], 1))
        states[:, 1 : 1 + self.nq] = qpos
        states[:, 1 + self.nq : 1 + self.nq + self.nv] = qvel
        return states

    def play(
        self,
        actor: "Actor",
        start: Float[np.ndarray, "n nstate"],
        horizon: int | Int[np.ndarray, " n"],
        *,
        record: bool = False,
        moments: bool = False,
    ) -> tuple[np.ndarray | Trajectory, ...]:
        """One episode per row of ``start`` (full physics states), ``actor`` choosing the actions;
        ``(lengths, returns)`` in float64, then ``(obs_sum, obs_sq_sum)`` if ``moments``, then a
        `Trajectory` if ``record``.

        An episode ends when the task terminates it, after ``horizon`` steps (an int or one per
        episode), or when its physics turns non-finite (that step earns 0; the state is rolled
        back). ``obs_sum`` and ``obs_sq_sum``, float64 of shape ``(n, observation_size)``, sum the
        observations the actor acted on in the steps each episode's length counts, and their
        squares: the reset observation included, the one after the final step excluded, so
        ``obs_sum / lengths[:, None]`` is each episode's mean observation.
        """
        return self._play(actor, start, horizon, record, moments).results()

    def _play(self, actor, start, horizon, record, moments) -> _Outcome:
        with self._lock:
            if self._pool is None:
                raise RuntimeError(f"this {type(self).__name__} has been closed")
            return self._play_unlocked(actor, start, horizon, record, moments)

    def _play_unlocked(self, actor, start, horizon, record, moments) -> _Outcome:
        num = start.shape[0]
        episode_limit = np.broadcast_to(np.asarray(horizon), (num,))
        if np.min(episode_limit) < 1:
            raise ValueError(f"horizon must be positive, got {np.min(episode_limit)}")
        limit = int(episode_limit.max())
        task = self.task
        nq, nv = self.nq, self.nv
        obs = task.observation(start[:, 1 : 1 + nq], start[:, 1 + nq : 1 + nq + nv])
        outcome = _Outcome(np.zeros(num, np.int32), np.zeros(num, np.float64), None, None)
        if moments:
            outcome.moments = (np.zeros(obs.shape), np.zeros(obs.shape))
        if record:
            outcome.trajectory = Trajectory(
                observations=np.empty((num, limit + 1, task.observation_size), obs.dtype),
                qpos=np.empty((num, limit + 1, self.nq)),
                rewards=np.zeros((num, limit)),
                terminated=np.zeros((num, limit), bool),
                done=np.ones((num, limit), bool),
            )
            outcome.trajectory.observations[:, 0] = obs
            outcome.trajectory.qpos[:, 0] = start[:, 1 : 1 + self.nq]
        groups = 2 if self.overlap and num >= MIN_OVERLAP_EPISODES else 1
        bounds = np.linspace(0, num, groups + 1).astype(int)
        batches = [
            EpisodeBatch(
                self, slice(lo, hi), actor.rows(slice(lo, hi)), start, obs, episode_limit, outcome
            )
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        if groups == 1:
            batch = batches[0]
            while not batch.finished_all:
                batch.observe(self._step_physics(*batch.act()))
        else:
            self._overlapped(batches)
        return outcome

    def _overlapped(self, batches: list["EpisodeBatch"]) -> None:
        """Step the batches in turn, each one's physics (on a helper thread) overlapping the
        previous one's observation and actions (on this thread).

        ``mujoco.rollout`` releases the GIL while it steps, so while its pool runs one batch's
        physics this thread computes the next batch's observations, rewards and actions. Only one
        physics call is in flight at a time, so the pool and its per-thread ``MjData`` are used as
        in the sequential loop, and every episode gets bitwise the same numbers.
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
                # The launched call is `running` before the host work below, which may raise.
                if finished is not None:
                    finished.observe(out)
                    if not finished.finished_all:
                        ready.append((finished, finished.act()))
        finally:
            # No physics call outlives this one, even when the host work above raised or was
            # interrupted: the next call would race it on the same pool and MjData.
            while running is not None and not running[1].done():
                try:
                    concurrent.futures.wait([running[1]])
                except KeyboardInterrupt:  # at most one control step to wait; the first counts
                    pass

    def _step_physics(
        self,
        start: Float[np.ndarray, "k nstate"],
        start_warm: Float[np.ndarray, "k nv"],
        ctrl: Float[np.ndarray, "k nu"],
    ) -> tuple[Float[np.ndarray, "k nstate"], Float[np.ndarray, "k nv"]]:
        """``frame_skip`` physics steps of ``k`` environments at constant controls, pooled: the
        final states and the constraint solver's warmstart for the next step."""
        frame_skip = self.task.frame_skip
        out = np.empty((start.shape[0], frame_skip, self.nstate))
        self._pool.rollout(
            [self.task.model] * start.shape[0],
            self._thread_data,
            start,
            np.repeat(np.asarray(ctrl, np.float64)[:, None], frame_skip, axis=1),
            control_spec=_CTRL,
            skip_checks=True,
            nstep=frame_skip,
            initial_warmstart=start_warm,
            state=out,
            chunk_size=max(1, start.shape[0] // (self._chunks_per_thread * self.num_threads)),
        )
        new = out[:, -1]
        # rollout() takes the solver's warmstart but does not return it. It is close to the last
        # acceleration, recovered from the last two velocities (exactly so for Euler; the mean of
        # the stages' for RK4): a starting guess only, the solver converges from any.
        before = out[:, -2] if frame_skip > 1 else start
        qvel = slice(1 + self.nq, 1 + self.nq + self.nv)
        warm = (new[:, qvel] - before[:, qvel]) / self.task.model.opt.timestep
        return new, warm


class Actor(abc.ABC):
    """Chooses the actions of a batch of episodes from their observations."""

    @abc.abstractmethod
    def rows(self, rows: slice) -> "Actor":
        """The actor of episodes ``rows`` alone."""

    @abc.abstractmethod
    def __call__(
        self, obs: Float[np.ndarray, "n obs"], live: Int[np.ndarray, " k"], step: int
    ) -> Float[np.ndarray, "k act"]:
        """The actions of episodes ``live`` (sorted, shrinking over time) at ``step``; ``obs``
        holds every episode's current observation."""


class OpenLoopActor(Actor):
    """Actions fixed in advance, ``actions[episode, step]`` (for tests against other simulators)."""

    def __init__(self, actions: Float[np.ndarray, "n steps act"]):
        self.actions = np.asarray(actions)

    def rows(self, rows: slice) -> "OpenLoopActor":
        return OpenLoopActor(self.actions[rows])

    def __call__(self, obs, live, step):
        return self.actions[live, step]


class MLPActor(Actor):
    """``n`` deterministic `eqx.nn.MLP` policies, one per episode, evaluated together in NumPy.

    Their outputs are clipped to [-1, 1] (NaN to 0) unless ``discrete``, where the action is the
    argmax of the logits. Once the live episodes have halved, the finished ones' parameters are
    dropped (re-gathering costs a copy, so doing it only then bounds the wasted evaluations to a
    factor of two).
    """

    def __init__(self, layers, activation, final_activation, *, discrete: bool = False):
        self.layers, self.activation, self.final_activation = layers, activation, final_activation
        self.discrete = discrete
        self.evaluated = np.arange(layers[0][0].shape[0])

    def rows(self, rows: slice) -> "MLPActor":
        layers = [(w[rows], None if b is None else b[rows]) for w, b in self.layers]
        return MLPActor(layers, self.activation, self.final_activation, discrete=self.discrete)

    def __call__(self, obs, live, step):
        if 2 * live.size <= self.evaluated.size:
            keep = np.searchsorted(self.evaluated, live)
            self.layers = [(w[keep], None if b is None else b[keep]) for w, b in self.layers]
            self.evaluated = live
        x = np.asarray(obs[self.evaluated], np.float32)
        out = mlp_forward(self.layers, self.activation, self.final_activation, x)
        if self.evaluated.size != live.size:
            out = out[np.searchsorted(self.evaluated, live)]
        if self.discrete:
            return np.argmax(out, axis=1)
        out = np.clip(out, -1.0, 1.0, out=out)
        out[np.isnan(out)] = 0.0
        return out


class EpisodeBatch:
    """Episodes ``rows`` of one `PhysicsPool.play` call, advanced in lock-step: `act` gives the
    physics inputs of the live episodes, `observe` takes its outputs.

    Writes the shared outcome (lengths, returns, moments, trajectory) at ``rows`` only, so batches
    over disjoint rows can alternate. Finished episodes are dropped from the batch unless the pool
    keeps them (``drop_done=False``: stepped on, no longer counted).
    """

    def __init__(
        self,
        pool: PhysicsPool,
        rows: slice,
        actor: Actor,
        start,
        reset_obs,
        episode_limit,
        outcome: _Outcome,
    ):
        num = rows.stop - rows.start
        self.pool, self.task, self.rows, self.actor = pool, pool.task, rows, actor
        self.trajectory = outcome.trajectory
        self.episode_limit = episode_limit[rows]
        # Views into the shared arrays.
        self.lengths, self.returns = outcome.lengths[rows], outcome.returns[rows]
        self.moments = None if outcome.moments is None else [m[rows] for m in outcome.moments]
        self.state = np.array(start[rows])
        self.warmstart = np.zeros((num, pool.nv))  # a freshly reset MjData's
        self.obs = np.array(reset_obs[rows])
        self.finished = np.zeros(num, bool)
        self.live = np.arange(num)  # the episodes stepped: the running ones (all if not drop_done)
        self.step = 0
        self.limit = int(self.episode_limit.max())
        self.finished_all = False

    def act(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The live episodes' physics state, solver warmstart and controls for this step."""
        live = self.live
        self.controls = self.task.controls(self.actor(self.obs, live, self.step))
        self.start, self.start_warm = self.state[live], self.warmstart[live]
        return self.start, self.start_warm, self.controls

    def observe(self, physics: tuple[np.ndarray, np.ndarray]) -> None:
        """Take the physics' output for the step `act` prepared; update returns and the batch."""
        new, warm = physics
        live, step = self.live, self.step
        finite = np.isfinite(new).all(axis=1) & np.isfinite(warm).all(axis=1)
        obs, reward, terminated = self.task.transition(self.start, new, self.controls)
        if not finite.all():
            # Keep the last finite physics; that step earns nothing and ends the episode. The
            # observation is that of the kept state under this step's controls (which the Ant
            # observes).
            new = np.where(finite[:, None], new, self.start)
            warm = np.where(finite[:, None], warm, self.start_warm)
            kept = ~finite
            obs = np.array(obs)
            obs[kept] = self.task.transition(new[kept], new[kept], self.controls[kept])[0]
            reward = np.where(finite, reward, 0.0)
        done = terminated | ~finite | (step + 1 >= self.episode_limit[live])
        running = ~self.finished[live]
        counted = live[running]
        if self.moments is not None:
            acted = self.obs[counted].astype(np.float64)
            self.moments[0][counted] += acted
            self.moments[1][counted] += acted * acted
        self.state[live], self.warmstart[live], self.obs[live] = new, warm, obs
        self.lengths[counted] += 1
        self.returns[counted] += reward[running]
        self.finished[counted] |= done[running]
        if self.trajectory is not None:
            qpos = new[running, 1 : 1 + self.pool.nq]
            self._record(step, counted, reward[running], terminated[running], done[running], qpos)
        self.step = step + 1
        if self.finished.all() or self.step >= self.limit:
            self.finished_all = True
            if self.trajectory is not None:
                self._record_tail()
        elif self.pool.drop_done:
            self.live = live[~done]

    def _record(self, step, counted, reward, terminated, done, qpos) -> None:
        trajectory, rows = self.trajectory, self.rows
        trajectory.rewards[rows][counted, step] = reward
        trajectory.terminated[rows][counted, step] = terminated
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


def mlp_forward(
    layers: list[tuple[np.ndarray, np.ndarray | None]],
    activation: Callable,
    final_activation: Callable,
    x: Float[np.ndarray, "k in"],
) -> Float[np.ndarray, "k out"]:
    """``eqx.nn.MLP.__call__`` for ``k`` policies at once, one observation each."""
    for index, (weight, bias) in enumerate(layers):
        x = np.matmul(weight, x[:, :, None])[:, :, 0]
        if bias is not None:
            x += bias  # in place: the matmul's output is a fresh array
        x = (final_activation if index == len(layers) - 1 else activation)(x)
    return x


def numpy_activation(fn: Callable) -> Callable:
    """The NumPy function of a JAX activation (tanh and relu directly, others through JAX)."""
    if fn is jnp.tanh:
        return np.tanh
    if fn is jax.nn.relu:
        return lambda x: np.maximum(x, 0.0)
    # A copy: NumPy's view of a JAX array is read-only, and the actions are clipped in place.
    return lambda x: np.array(fn(x), np.float32)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (which schedulers and ``taskset`` set),
    else the machine's count where the platform has no affinity."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def unpack_mlp(
    params: PyTree, policy_static: PyTree, in_size: int, out_size: int, *, discrete: bool = False
) -> tuple[MLPActor, int]:
    """The `MLPActor` of ``n`` stacked MLPs (leading axis ``n`` on every array of ``params``) that
    map ``in_size`` observations to ``out_size`` outputs, and ``n``; ValueError naming the leaf
    otherwise."""
    layers, activation, final_activation, num = mlp_layers(params, policy_static, in_size, out_size)
    return MLPActor(layers, activation, final_activation, discrete=discrete), num


def mlp_layers(
    params: PyTree, policy_static: PyTree, in_size: int, out_size: int
) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], Callable, Callable, int]:
    """The layers of ``n`` stacked MLPs as NumPy float32 ``(weight, bias)`` pairs, their NumPy
    activations and ``n``, checked against ``in_size`` inputs and ``out_size`` outputs;
    ValueError naming the leaf otherwise."""
    try:
        policy = eqx.combine(params, policy_static)
    except Exception as error:  # jax.tree.map's message spans lines; one line is enough here
        raise ValueError(
            "params do not match policy_static's tree structure "
            f"({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from None
    if not isinstance(policy, eqx.nn.MLP):
        raise ValueError(f"expected an equinox.nn.MLP policy, got {type(policy).__name__}")
    num, first = None, None
    for index, layer in enumerate(policy.layers):
        for name, ndim in (("weight", 3), ("bias", 2)):
            leaf, where = getattr(layer, name), f"params.layers[{index}].{name}"
            if leaf is None:
                continue
            shape = np.shape(leaf)
            if len(shape) != ndim:
                raise ValueError(
                    f"{where} has shape {shape}; expected {ndim} axes, the first one num_envs "
                    "(params of one unbatched policy?)"
                )
            if num is None:
                num, first = shape[0], where
            elif shape[0] != num:
                raise ValueError(
                    f"{where} has leading (num_envs) axis {shape[0]}, but {first} has {num}"
                )
    if not num:
        raise ValueError("params hold no policies")
    layers = []
    size = in_size
    for index, layer in enumerate(policy.layers):
        weight = np.asarray(layer.weight, np.float32)
        if weight.shape[2] != size:
            raise ValueError(
                f"params.layers[{index}].weight has shape {weight.shape}; expected "
                f"({num}, out, {size})"
            )
        bias = None if layer.bias is None else np.asarray(layer.bias, np.float32)
        if bias is not None and bias.shape != weight.shape[:2]:
            raise ValueError(
                f"params.layers[{index}].bias has shape {bias.shape}; expected {weight.shape[:2]}"
            )
        layers.append((weight, bias))
        size = weight.shape[1]
    if size != out_size:
        raise ValueError(
            f"params.layers[{len(layers) - 1}].weight has shape {layers[-1][0].shape}; the policy "
            f"must output {out_size} actions"
        )
    activation = numpy_activation(policy.activation)
    final_activation = numpy_activation(policy.final_activation)
    return layers, activation, final_activation, int(num)
