"""Any registered Gymnasium environment as an EPVF target: whole episodes played on the host.

`GymnasiumEnv` is an `Environment` whose episodes (`nfn_rl.episode_length_and_return` of an MLP
policy) run on the host through one `jax.pure_callback` per batch of policies: natively
(`nfn_rl.envs._gym_tasks`, MuJoCo's C engine over the batch on a thread pool) for the tasks that
have a native version, otherwise in Gymnasium's own vector API (``gymnasium.vector.SyncVectorEnv``,
one Python ``step`` per environment and step: general, and far slower).
"""

import threading
from collections.abc import Sequence

import equinox as eqx
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree, UInt32

from nfn_rl.envs._batched import HostResource, unpack_mlp
from nfn_rl.envs._callback import episode_shapes, flatten_batch, host_results
from nfn_rl.envs._gym_tasks import NATIVE_GYMNASIUM_TASKS, NativeGymnasiumRollout
from nfn_rl.envs._protocol import Environment, EnvState

BACKENDS = ("auto", "native", "gymnasium")


def gymnasium_spec(env_id: str):
    """Gymnasium's registered spec of ``env_id``, or None if there is none."""
    try:
        return gymnasium.spec(env_id)
    except gymnasium.error.Error:
        return None


def seeds_of(key_data: UInt32[np.ndarray, "*batch 2"]) -> list[int]:
    """The Gymnasium seed of each episode: its key's two 32-bit words as one integer."""
    words = np.asarray(key_data, np.uint64).reshape(-1, 2)
    return [int(high) << 32 | int(low) for high, low in words]


class GymnasiumVectorRollout(HostResource):
    """Episodes of any Gymnasium env for ``n`` MLP policies at once, stepped by Gymnasium's
    ``SyncVectorEnv`` (one ``env.step`` per episode and step, in Python).

    Box actions take the policy's [-1, 1] outputs mapped affinely onto the box, Discrete ones the
    argmax of its logits. The vector env of each batch size is built once and kept; calls from
    several threads take turns.
    """

    def __init__(self, env_id: str, horizon: int):
        self.env_id, self.horizon = env_id, horizon
        self._vector_envs: dict[int, gymnasium.vector.SyncVectorEnv] = {}
        self._lock = threading.Lock()
        probe = gymnasium.make(env_id)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()

    def close(self) -> None:
        """Close the Gymnasium envs."""
        with self._lock:
            for env in self._vector_envs.values():
                env.close()
            self._vector_envs.clear()

    def _vector_env(self, num: int) -> gymnasium.vector.SyncVectorEnv:
        if num not in self._vector_envs:
            self._vector_envs[num] = gymnasium.vector.SyncVectorEnv(
                [
                    lambda: gymnasium.make(self.env_id, max_episode_steps=self.horizon)
                    for _ in range(num)
                ]
            )
        return self._vector_envs[num]

    def episode_lengths_and_returns(
        self,
        params: PyTree,
        policy_static: PyTree,
        seeds: Sequence[int],
        horizon: int,
        *,
        moments: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """One episode per policy from ``reset(seed=...)``; lengths and float64 returns, and with
        ``moments`` the float64 sums of the observations the policy acted on and of their
        squares over the counted steps (each of shape ``(n, observation_size)``)."""
        with self._lock:
            results = self._episodes(params, policy_static, seeds, horizon)
        return results if moments else results[:2]

    def _episodes(self, params, policy_static, seeds, horizon):
        space = self.action_space
        discrete = isinstance(space, gymnasium.spaces.Discrete)
        out_size = int(space.n) if discrete else int(np.prod(space.shape))
        in_size = int(np.prod(self.observation_space.shape))
        actor, num = unpack_mlp(params, policy_static, in_size, out_size, discrete=discrete)
        env = self._vector_env(num)
        obs, _ = env.reset(seed=list(seeds))
        lengths, returns = np.zeros(num, np.int32), np.zeros(num)
        obs_sum, obs_sq_sum = np.zeros((num, in_size)), np.zeros((num, in_size))
        if discrete:
            actions = np.full(num, space.start, space.dtype)
        else:
            centre = (space.high + space.low) / 2
            half_range = (space.high - space.low) / 2
            actions = np.tile(centre.astype(space.dtype), (num, 1))
        live = np.arange(num)
        for step in range(horizon):
            obs = obs.reshape(num, -1)
            obs_sum[live] += obs[live]
            obs_sq_sum[live] += np.square(obs[live], dtype=np.float64)
            chosen = actor(obs, live, step)
            if discrete:
                actions[live] = space.start + chosen
            else:
                actions[live] = centre + half_range * chosen
            # Finished episodes are stepped too (the vector env resets them), their results
            # ignored.
            obs, reward, terminated, truncated, _ = env.step(actions)
            lengths[live] += 1
            returns[live] += reward[live]
            live = live[~(terminated | truncated)[live]]
            if live.size == 0:
                break
        return lengths, returns, obs_sum, obs_sq_sum


class GymnasiumEnv(Environment):
    """A registered Gymnasium environment whose episodes run on the host.

    ``GymnasiumEnv("Swimmer-v5", horizon=None, backend="auto")``: ``horizon`` defaults to the
    spec's ``max_episode_steps``; ``backend`` "native" (MuJoCo's C engine over the batch; the
    ids in `NATIVE_GYMNASIUM_TASKS` only), "gymnasium" (Gymnasium's vector API) or "auto" (native
    where it exists). Episode returns are the undiscounted sums of Gymnasium's rewards, from the
    reset Gymnasium's ``reset(seed=s)`` gives, with ``s`` from the episode's key (so runs are
    deterministic for a seed). Observations reach the policy in float32.

    Each host call opens its own rollout (`rollout`: a thread pool, or Gymnasium's envs) and
    closes it before returning, so the env holds no threads or MuJoCo data between calls and two
    equal ones (same id, horizon, backend and ``num_threads``) compile once.

    Only whole episodes of MLP policies run (`nfn_rl.episode_length_and_return`, what EPVF
    needs); `reset` and `step` raise, so critics that measure observation statistics (the
    probing ones) and the PPO/SAC baselines do not apply. A program with a host callback is not
    kept in JAX's persistent compilation cache.
    """

    env_id: str = eqx.field(static=True)
    backend: str = eqx.field(static=True)
    num_threads: int | None = eqx.field(static=True)
    observation_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)
    horizon: int = eqx.field(static=True)
    max_return: float = eqx.field(static=True)
    reward_threshold: float | None = eqx.field(static=True)

    def __init__(
        self,
        env_id: str,
        horizon: int | None = None,
        backend: str = "auto",
        num_threads: int | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        spec = gymnasium_spec(env_id)
        if spec is None:
            raise ValueError(f"{env_id!r} is not a registered Gymnasium environment id")
        if horizon is None:
            horizon = spec.max_episode_steps
        if horizon is None:
            raise ValueError(f"Gymnasium env {env_id!r} has no max_episode_steps; pass horizon")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        if backend == "native" and env_id not in NATIVE_GYMNASIUM_TASKS:
            native = ", ".join(sorted(NATIVE_GYMNASIUM_TASKS))
            raise ValueError(f"backend='native': no native version of {env_id!r}; native: {native}")
        if backend == "auto":
            backend = "native" if env_id in NATIVE_GYMNASIUM_TASKS else "gymnasium"
        if backend == "native":
            task = NATIVE_GYMNASIUM_TASKS[env_id]()
            obs_size, action_size, discrete = task.observation_size, task.action_size, False
        else:
            try:
                probe = gymnasium.make(env_id)
            except gymnasium.error.Error as error:
                raise ValueError(
                    f"Gymnasium env {env_id!r} cannot be made: {str(error).splitlines()[0]}"
                ) from None
            probe.close()
            obs_size, action_size, discrete = _sizes(env_id, probe)
        self.env_id, self.backend, self.num_threads = env_id, backend, num_threads
        self.observation_size, self.action_size, self.discrete = obs_size, action_size, discrete
        self.horizon = int(horizon)
        self.reward_threshold = spec.reward_threshold
        self.max_return = float("inf")

    def rollout(self) -> "NativeGymnasiumRollout | GymnasiumVectorRollout":
        """A new host rollout of this env, native or Gymnasium's (close it, or use it as a
        context manager)."""
        if self.backend == "native":
            return NativeGymnasiumRollout(self.env_id, self.num_threads)
        return GymnasiumVectorRollout(self.env_id, self.horizon)

    def reset(self, key: PRNGKeyArray) -> EnvState:
        raise NotImplementedError(self._whole_episodes_only())

    def step(self, state: EnvState, action: Array) -> EnvState:
        raise NotImplementedError(self._whole_episodes_only())

    def _whole_episodes_only(self) -> str:
        return (
            f"GymnasiumEnv({self.env_id!r}) plays whole episodes of MLP policies on the host "
            "(nfn_rl.episode_length_and_return); it has no JAX reset or step"
        )

    def episode(
        self, policy: eqx.nn.MLP, key: PRNGKeyArray, *, observation_sums: bool = False
    ) -> tuple[Array, ...]:
        """The episode length and return of ``policy`` from the reset of ``key`` (batched under
        `vmap` into one host call); with ``observation_sums``, also the sums of its observations
        and of their squares over the counted steps (`nfn_rl.envs.EpisodeSummary`)."""
        params, static = eqx.partition(policy, eqx.is_array)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        ndims = [leaf.ndim for leaf in jax.tree.leaves(params)]
        # One per traced program: its host calls (one per device under `shard_map`, from
        # different threads) run in turn rather than start pools on the same cores at once.
        one_at_a_time = threading.Lock()

        def on_host(params, key_data):
            flat, batch_shape = flatten_batch(params, ndims)
            seeds = seeds_of(np.asarray(key_data).reshape(-1, 2))
            with one_at_a_time, self.rollout() as host:
                results = host.episode_lengths_and_returns(
                    flat, static, seeds, self.horizon, moments=observation_sums
                )
            return host_results(results, batch_shape)

        shapes = episode_shapes(self.observation_size, observation_sums)
        return jax.pure_callback(on_host, shapes, params, key, vmap_method="broadcast_all")


def _sizes(env_id: str, env: gymnasium.Env) -> tuple[int, int, bool]:
    """Observation size, action size and discreteness of a Gymnasium env's spaces; ValueError
    naming the id and the space where EPVF cannot use it."""
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"Gymnasium env {env_id!r}: observation space {obs_space} is not supported "
            "(EPVF's MLP policies need a one-dimensional Box)"
        )
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return obs_space.shape[0], int(action_space.n), True
    bounded = isinstance(action_space, gymnasium.spaces.Box) and (
        np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))
    )
    if not bounded or len(action_space.shape) != 1:
        raise ValueError(
            f"Gymnasium env {env_id!r}: action space {action_space} is not supported "
            "(EPVF needs a bounded one-dimensional Box or a Discrete space)"
        )
    return obs_space.shape[0], action_space.shape[0], False
