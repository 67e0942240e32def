"""Pictures of one Ant episode: an animation rendered offscreen, or a plot where no renderer is
available."""

import os
from pathlib import Path

import equinox as eqx
import jax
import mujoco
import numpy as np

from nfn_rl.envs._ant import TARGET_VELOCITY, Ant, _load_mj_model
from nfn_rl.envs._native import NativeAntRollout, NativeTrajectory

# Rendered frames per second of simulated time; GIF frame durations are whole milliseconds.
_FPS = 50


class RenderingUnavailable(RuntimeError):
    """MuJoCo's offscreen renderer could not start (no OpenGL context on this machine)."""


def record_episode(env: Ant, policy: eqx.nn.MLP) -> NativeTrajectory:
    """The episode of `policy` from the home reset, recorded step by step (one native episode:
    the same physics as `nfn_rl.envs.NativeAnt`)."""
    params, static = eqx.partition(policy, eqx.is_array)
    batched = jax.tree.map(lambda x: np.asarray(x)[None], params)
    with NativeAntRollout(env, num_threads=1) as rollout:
        _, _, trajectory = rollout.episode_lengths_and_returns(batched, static, record=True)
    return jax.tree.map(lambda x: x[0], trajectory)


def _states(trajectory: NativeTrajectory) -> int:
    """The number of recorded states up to the episode's end (its length plus the reset)."""
    ended = np.flatnonzero(trajectory.done)
    return int(ended[0]) + 2 if ended.size else len(trajectory.qpos)


def save_episode_animation(
    env: Ant,
    trajectory: NativeTrajectory,
    path: str | os.PathLike,
    *,
    width: int = 320,
    height: int = 240,
) -> Path:
    """A GIF at `path` of the recorded episode (`record_episode`), seen by a camera that follows
    the trunk, at real-time speed. Raises `RenderingUnavailable` where MuJoCo cannot render
    offscreen (set `MUJOCO_GL=egl` before importing mujoco on a headless machine)."""
    from PIL import Image

    model, _, _ = _load_mj_model(env.variant)
    data = mujoco.MjData(model)
    try:
        renderer = mujoco.Renderer(model, height, width)
    except Exception as error:  # Any backend failure means the same: no renderer here.
        raise RenderingUnavailable(f"MuJoCo cannot render offscreen here: {error}") from error
    camera = mujoco.MjvCamera()
    camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
    camera.trackbodyid = model.body("trunk").id
    camera.distance, camera.elevation, camera.azimuth = 3.0, -20.0, 120.0
    control_dt = model.opt.timestep * env.n_substeps
    every = max(1, round(1 / (_FPS * control_dt)))
    frames = []
    try:
        for qpos in trajectory.qpos[: _states(trajectory) : every]:
            data.qpos[:] = qpos
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=camera)
            frames.append(Image.fromarray(renderer.render()))
    finally:
        renderer.close()
    path = Path(path)
    duration = round(1000 * every * control_dt)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return path


def save_episode_plot(env: Ant, trajectory: NativeTrajectory, path: str | os.PathLike) -> Path:
    """A PNG at `path` of the recorded episode: the trunk's x-y path, and its forward velocity
    (in the trunk's frame) against the 2 m/s target, over time."""
    from matplotlib.figure import Figure

    model, _, _ = _load_mj_model(env.variant)
    control_dt = model.opt.timestep * env.n_substeps
    steps = _states(trajectory)
    xy = trajectory.qpos[:steps, :2]
    # Observation entries 17-19 are the trunk's linear velocity in its own frame.
    forward = trajectory.observations[:steps, 17]
    fig = Figure(figsize=(10, 4))
    path_ax, speed_ax = fig.subplots(1, 2)
    path_ax.plot(xy[:, 0], xy[:, 1])
    path_ax.plot(*xy[0], "o", label="start")
    path_ax.set_aspect("equal", adjustable="datalim")
    path_ax.set_xlabel("x [m]")
    path_ax.set_ylabel("y [m]")
    path_ax.legend()
    time = np.arange(steps) * control_dt
    speed_ax.plot(time, forward, label="forward velocity")
    speed_ax.axhline(TARGET_VELOCITY[0], color="gray", ls=":", label="target")
    speed_ax.set_xlabel("time [s]")
    speed_ax.set_ylabel("velocity [m/s]")
    speed_ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
