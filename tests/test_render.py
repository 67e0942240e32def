"""Pictures of an Ant episode: the recorded physics, the animation and the fallback plot."""

import equinox as eqx
import jax
import numpy as np
import pytest
from PIL import Image

import nfn_rl
from nfn_rl.envs import Ant, record_episode, save_episode_animation, save_episode_plot


@pytest.fixture(scope="module")
def episode():
    env = Ant("torque", horizon=30)
    policy = nfn_rl.make_policy(env, 8, 2, key=jax.random.key(0))
    return env, policy, record_episode(env, policy)


def test_recorded_episode_matches_the_native_rollout(episode):
    env, policy, trajectory = episode
    params, static = eqx.partition(policy, eqx.is_array)
    batched = jax.tree.map(lambda x: np.asarray(x)[None], params)
    lengths, returns = nfn_rl.envs.NativeAntRollout(env).episode_lengths_and_returns(
        batched, static
    )
    np.testing.assert_allclose(trajectory.rewards.sum(), returns[0], rtol=1e-5)
    assert trajectory.qpos.shape == (31, 15)
    # The reset is the home keyframe, and the trunk moves from there.
    np.testing.assert_allclose(trajectory.qpos[0, 2], trajectory.observations[0, 0], rtol=1e-6)
    assert not np.allclose(trajectory.qpos[0], trajectory.qpos[int(lengths[0])])


def test_animation_and_plot_are_written(episode, tmp_path):
    env, _, trajectory = episode
    plot = save_episode_plot(env, trajectory, tmp_path / "episode.png")
    assert plot.stat().st_size > 10_000
    try:
        gif = save_episode_animation(env, trajectory, tmp_path / "episode.gif", width=64, height=48)
    except nfn_rl.envs.RenderingUnavailable:
        pytest.skip("no offscreen OpenGL here (MUJOCO_GL=egl is what these machines support)")
    with Image.open(gif) as image:
        # 30 torque steps of 10 ms at 50 frames per second: every second state, 16 frames.
        assert (image.size, image.n_frames, image.info["duration"]) == ((64, 48), 16, 20)
