"""Observation moments (``moments=True``) of the native rollouts against their recorded episodes.

Each episode's sums of the observations it acted on (and of their squares) over the steps its
length counts must equal, to the bit, the same sums taken step by step over the recorded
trajectory, for both Ant variants and a Gymnasium task, in the sequential and the overlapped loop,
with finished episodes dropped or stepped on.
"""

import equinox as eqx
import jax
import numpy as np
import pytest

from nfn_rl import make_policy, perturb_population
from nfn_rl.envs import Ant, GymnasiumEnv, NativeAntRollout, NativeGymnasiumRollout
from nfn_rl.envs._batched import MIN_OVERLAP_EPISODES

NUM = 2 * MIN_OVERLAP_EPISODES  # the overlapped loop's two halves
HORIZON = 40


def _population(env, num: int):
    policy = make_policy(env, 16, 2, key=jax.random.key(0))
    population = perturb_population(policy, num, key=jax.random.key(1), scale=0.5)
    return eqx.partition(population, eqx.is_array)


def _sums_over_trajectory(observations, lengths):
    """The float64 sums of ``observations[i, :lengths[i]]`` and of their squares, step by step
    (the order the rollout adds them in)."""
    sums = np.zeros((observations.shape[0], observations.shape[2]))
    squares = np.zeros_like(sums)
    for step in range(observations.shape[1] - 1):
        counted = step < lengths
        observed = observations[counted, step].astype(np.float64)
        sums[counted] += observed
        squares[counted] += observed * observed
    return sums, squares


ANT_MAX_STEPS = 5 + np.arange(NUM) % 36


def _play_ant(variant, threads, drop_done, overlap, max_steps=ANT_MAX_STEPS, **kwargs):
    """Episodes of different lengths in both halves of the batch: the position Ant rarely falls
    this early, so per-episode limits end them."""
    env = Ant(variant, horizon=HORIZON)
    params, static = _population(env, NUM)
    with NativeAntRollout(env, threads, drop_done=drop_done, overlap=overlap) as native:
        return native.episode_lengths_and_returns(params, static, max_steps=max_steps, **kwargs)


def _play_hopper(threads, drop_done, overlap, **kwargs):
    env = GymnasiumEnv("Hopper-v5")
    params, static = _population(env, NUM)
    with NativeGymnasiumRollout("Hopper-v5", threads, overlap=overlap) as native:
        native.pool.drop_done = drop_done
        return native.episode_lengths_and_returns(params, static, range(NUM), HORIZON, **kwargs)


PLAYS = {
    "ant-torque": lambda *a, **k: _play_ant("torque", *a, **k),
    "ant-position": lambda *a, **k: _play_ant("position", *a, **k),
    "hopper": _play_hopper,
}


@pytest.mark.parametrize("name", sorted(PLAYS))
@pytest.mark.parametrize(
    "threads, drop_done, overlap", [(1, True, False), (2, True, True), (2, False, True)]
)
def test_moments_are_the_sums_over_the_recorded_observations(name, threads, drop_done, overlap):
    play = PLAYS[name]
    lengths, returns, obs_sum, obs_sq_sum, trajectory = play(
        threads, drop_done, overlap, record=True, moments=True
    )
    assert 1 < lengths.min() < lengths.max()  # episodes of different lengths
    size = trajectory.observations.shape[2]
    assert obs_sum.shape == obs_sq_sum.shape == (NUM, size)
    assert obs_sum.dtype == obs_sq_sum.dtype == np.float64
    expected_sum, expected_sq_sum = _sums_over_trajectory(trajectory.observations, lengths)
    np.testing.assert_array_equal(obs_sum, expected_sum)
    np.testing.assert_array_equal(obs_sq_sum, expected_sq_sum)
    assert np.abs(obs_sum).sum() > 0 and (obs_sq_sum >= obs_sum**2 / lengths[:, None]).all()
    # Asking for the moments changes nothing else.
    plain_lengths, plain_returns = play(threads, drop_done, overlap)
    np.testing.assert_array_equal(lengths, plain_lengths)
    np.testing.assert_array_equal(returns, plain_returns)
    only_moments = play(threads, drop_done, overlap, moments=True)
    for got, want in zip(only_moments, (lengths, returns, obs_sum, obs_sq_sum), strict=True):
        np.testing.assert_array_equal(got, want)


def test_ant_moments_follow_per_episode_limits():
    """Episodes cut short by ``max_steps`` count only the observations before their cut."""
    max_steps = 1 + np.arange(NUM) % 7
    lengths, _, obs_sum, _, trajectory = _play_ant(
        "torque", 2, True, True, max_steps=max_steps, record=True, moments=True
    )
    assert (lengths <= max_steps).all() and (lengths == 1).any()
    np.testing.assert_array_equal(
        obs_sum, _sums_over_trajectory(trajectory.observations, lengths)[0]
    )
    # A one-step episode's sum is its reset observation.
    one = lengths == 1
    np.testing.assert_array_equal(obs_sum[one], trajectory.observations[one, 0])
