"""The Ant whose whole episodes run on MuJoCo's C engine, inside jitted code."""

import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from nfn_rl.envs._ant import Ant
from nfn_rl.envs._callback import episode_shapes, flatten_batch, host_results
from nfn_rl.envs._native import NativeAntRollout


class NativeAnt(Ant):
    """An `Ant` whose episodes (`nfn_rl.episode_length_and_return`) are played by a
    `NativeAntRollout` on the host, through `jax.pure_callback`; everything else (`reset`,
    `step`, what PPO and SAC use) is the MJX `Ant`'s.

    Jitted code that rolls out a batch of policies (a `vmap` over their parameters) makes one
    host call for the whole batch, which the C engine steps with its thread pool. On a CPU that
    is several times faster than MJX and compiles no physics (`benchmarks/rollout_backends.py`);
    returns agree with MJX in distribution, not step for step (see `NativeAntRollout`). A
    program with a host callback is not kept in JAX's persistent compilation cache.

    Each host call opens its own pool of ``num_threads`` threads (default: `usable_cpus`) and
    closes it before returning (a few milliseconds), so a `NativeAnt` holds no threads or
    MuJoCo data between calls and two equal ones (same variant, horizon and ``num_threads``)
    compile once. The host calls of one program run one at a time: under `shard_map` each
    device makes its own, and the returns are bitwise those of one device.
    """

    num_threads: int | None = eqx.field(static=True)

    def __init__(
        self, variant: str = "position", horizon: int = 1000, num_threads: int | None = None
    ):
        super().__init__(variant, horizon)
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        self.num_threads = num_threads

    def rollout(self) -> NativeAntRollout:
        """A new `NativeAntRollout` of this env (close it, or use it as a context manager)."""
        return NativeAntRollout(self, self.num_threads)

    def episode(self, policy: eqx.nn.MLP, *, observation_sums: bool = False) -> tuple[Array, ...]:
        """The episode length and return of `policy` from the home reset (batched under
        `vmap` into one host call); with ``observation_sums``, also the sums of its observations
        and of their squares over the counted steps (`nfn_rl.envs.EpisodeSummary`)."""
        params, static = eqx.partition(policy, eqx.is_array)
        ndims = [leaf.ndim for leaf in jax.tree.leaves(params)]
        # One per traced program: its host calls (one per device under `shard_map`, from
        # different threads) run in turn rather than start pools on the same cores at once.
        one_at_a_time = threading.Lock()

        def host(params):
            flat, batch_shape = flatten_batch(params, ndims)
            with one_at_a_time, self.rollout() as rollout:
                results = rollout.episode_lengths_and_returns(
                    flat, static, moments=observation_sums
                )
            return host_results(results, batch_shape)

        shapes = episode_shapes(self.observation_size, observation_sums)
        return jax.pure_callback(host, shapes, params, vmap_method="expand_dims")

    def open_loop_observations(
        self, actions: Float[Array, "n steps 8"]
    ) -> tuple[Float[Array, "n steps 34"], Bool[Array, "n steps"]]:
        """The observation before each of ``actions``' steps of each episode (``steps`` at
        most the horizon), and whether the episode was still running there: what
        `nfn_rl.envs.observation_statistics` averages, played on the C engine."""
        num, steps = actions.shape[:2]

        def host(actions):
            with self.rollout() as rollout:
                _, _, trajectory = rollout.open_loop_episodes(np.asarray(actions))
            live = np.concatenate([np.ones((num, 1), bool), ~trajectory.done[:, :-1]], axis=1)
            return trajectory.observations[:, :-1], live

        shapes = (
            jax.ShapeDtypeStruct((num, steps, self.observation_size), jnp.float32),
            jax.ShapeDtypeStruct((num, steps), jnp.bool_),
        )
        return jax.pure_callback(host, shapes, actions, vmap_method="sequential")
