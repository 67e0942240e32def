"""An MJX quadruped ("Ant") that should walk forward at 2 m/s: the EPVF paper's scaled task.

The MJCF (`assets/ant.xml`) is written for this project: a spherical trunk with four two-joint legs
(hip yaw + knee), capsules and spheres only, contacts only as four explicit foot-floor pairs,
Newton solver with 1 iteration and 4 line-search steps, Euler damping off. Two variants follow the
two public versions of the task:

- ``"position"`` (default, the 2025 version): position actuators with kp 20 and kv 0.5, target =
  home + 0.3 * action; timestep 0.005 s with 4 physics substeps per control step (20 s episodes at
  horizon 1000); joints with armature 0.02, damping 0.1, frictionloss 0.1; home trunk height 0.61
  with bent knees (0, 1.2, 0, -1.2, 0, -1.2, 0, 1.2).
- ``"torque"`` (the 2024 version): torque motors with gear 150, ctrl = action; timestep 0.01 s with
  one substep (a quarter of the physics per control step); joints with armature 1, damping 1, no
  frictionloss; the same home pose as "position" (the 2024 version's straight legs at height 0.75
  would put the knees outside their joint ranges, which the limits snap at the first step).

Observation (34): trunk height (1), joint positions minus home (8), joint velocities (8), trunk
linear velocity in the trunk frame (3), trunk angular velocity in the trunk frame (3), gravity
direction in the trunk frame (3), and the last control: position targets ("position") or the
clipped action ("torque") (8). Reward ``exp(-|v_xy - (2, 0)|^2 / 0.25)`` from the trunk-frame
linear velocity, so the maximum return equals the horizon.
"""

import contextlib
import importlib.resources
import io
import sys
from types import ModuleType

import equinox as eqx
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from nfn_rl.envs._protocol import Environment, EnvState

# mujoco-mjx tries to import the optional NVIDIA Warp backend on import and *prints* (not logs or
# warns) a line for each failure, so there is no logger or warning filter to target. Only those
# two lines are swallowed; anything else mjx prints while importing is passed through.
_MJX_IMPORT_NOISE = ("Failed to import warp:", "Failed to import mujoco_warp:")


def _import_mjx() -> ModuleType:
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        from mujoco import mjx
    for line in captured.getvalue().splitlines(keepends=True):
        if not line.startswith(_MJX_IMPORT_NOISE):
            sys.stdout.write(line)
    return mjx


mjx = _import_mjx()

OBS_BOUND = 100.0
"""Observations are clipped to [-OBS_BOUND, OBS_BOUND] (after NaN/inf are replaced), so that a
misbehaving simulation can never feed non-finite or huge values to a policy or critic. Joint speeds
of a healthy rollout stay well inside this bound."""

TARGET_VELOCITY = (2.0, 0.0)
REWARD_WIDTH = 0.25
MIN_HEIGHT = 0.2
MAX_HEIGHT = 1.0

_N_JOINTS = 8
_OBS_SIZE = 34
_VARIANTS = ("position", "torque")


# The observation, reward and termination below are written once for both array libraries
# (`xp` is `jax.numpy` or `numpy`, leading batch axes allowed), so that the MJX env and the native
# MuJoCo rollouts (`nfn_rl.envs._native`) compute them with the very same formulas.
_Arr = Array | np.ndarray


def tracking_reward(
    velocity_xy: Float[_Arr, "*batch 2"], xp: ModuleType = jnp
) -> Float[_Arr, "*batch"]:
    """``exp(-|v_xy - (2, 0)|^2 / 0.25)``: 1 at the target velocity, ``exp(-16)`` standing still."""
    error = velocity_xy - xp.asarray(TARGET_VELOCITY, velocity_xy.dtype)
    return xp.exp(-xp.sum(error**2, axis=-1) / REWARD_WIDTH)


def _rotate_into_frame(
    quat: Float[_Arr, "*batch 4"], vec: Float[_Arr, "*#batch 3"], xp: ModuleType = jnp
) -> Float[_Arr, "*batch 3"]:
    """``R(quat)^T @ vec``: world-frame ``vec`` expressed in the frame with orientation ``quat``."""
    # MuJoCo's quaternions are not renormalised every step in float32; normalising keeps the
    # rotation orthonormal so the projected gravity stays a unit vector.
    quat = quat / xp.maximum(xp.linalg.norm(quat, axis=-1, keepdims=True), 1e-8)
    w, u = quat[..., :1], quat[..., 1:]
    # Rotating by the conjugate quaternion (w, -u).
    t = 2.0 * xp.cross(-u, vec)
    return vec + w * t + xp.cross(-u, t)


def _fallen(height: Float[_Arr, "*batch"]) -> Bool[_Arr, "*batch"]:
    """The trunk height has left (MIN_HEIGHT, MAX_HEIGHT): the episode terminates."""
    return (height <= MIN_HEIGHT) | (height >= MAX_HEIGHT)


def _observation(
    qpos: Float[_Arr, "*batch 15"],
    qvel: Float[_Arr, "*batch 14"],
    control: Float[_Arr, "*batch 8"],
    home_qpos: Float[_Arr, "15"],
    xp: ModuleType = jnp,
    velocity: Float[_Arr, "*batch 3"] | None = None,
) -> Float[_Arr, "*batch 34"]:
    """The 34 observations (see the module docstring), clipped to +-OBS_BOUND and finite.

    ``velocity`` is the trunk-frame linear velocity, ``_rotate_into_frame(qpos[..., 3:7],
    qvel[..., 0:3], xp)``, for callers that have already computed it for the reward.
    """
    quat = qpos[..., 3:7]
    down = xp.broadcast_to(xp.asarray([0.0, 0.0, -1.0], qpos.dtype), qvel[..., 0:3].shape)
    if velocity is None:
        velocity = _rotate_into_frame(quat, qvel[..., 0:3], xp)
    obs = xp.concatenate(
        [
            qpos[..., 2:3],
            qpos[..., 7:] - home_qpos[7:],
            qvel[..., 6:],
            velocity,
            # MuJoCo's free-joint angular velocity is already in the body frame.
            qvel[..., 3:6],
            _rotate_into_frame(quat, down, xp),
            control,
        ],
        axis=-1,
    )
    return xp.clip(xp.nan_to_num(obs), -OBS_BOUND, OBS_BOUND)


def _load_mj_model(variant: str) -> tuple[mujoco.MjModel, np.ndarray, np.ndarray]:
    """The compiled MuJoCo model for ``variant``, with its home qpos and home control."""
    xml = importlib.resources.files("nfn_rl.envs").joinpath("assets/ant.xml").read_text()
    model = mujoco.MjModel.from_xml_string(xml)
    if variant == "position":
        key = model.key("home")
        return model, np.array(key.qpos), np.array(key.ctrl)
    # The XML describes the position variant; the torque variant differs only in numbers, so it is
    # derived here instead of keeping a second, nearly identical MJCF in sync.
    model.actuator_gaintype[:] = mujoco.mjtGain.mjGAIN_FIXED
    model.actuator_gainprm[:] = 0.0
    model.actuator_gainprm[:, 0] = 1.0
    model.actuator_biastype[:] = mujoco.mjtBias.mjBIAS_NONE
    model.actuator_biasprm[:] = 0.0
    model.actuator_gear[:] = 0.0
    model.actuator_gear[:, 0] = 150.0
    model.actuator_ctrllimited[:] = 1
    model.actuator_ctrlrange[:] = (-1.0, 1.0)
    model.dof_armature[6:] = 1.0
    model.dof_damping[6:] = 1.0
    model.dof_frictionloss[6:] = 0.0
    model.opt.timestep = 0.01
    key = model.key("home_torque")
    return model, np.array(key.qpos), np.array(key.ctrl)


class AntState(EnvState):
    """`EnvState` plus the last control and a count of non-finite physics events.

    ``nonfinite`` counts control steps of this episode, up to its end, whose physics produced NaN or
    inf; on such a step the physics is rolled back to the previous (finite) state, the reward is 0
    and the episode ends. Sum it over environments to report how often the simulation blew up.
    """

    control: Float[Array, "8"]
    nonfinite: Int[Array, ""]


class Ant(Environment):
    """MJX Ant walking at 2 m/s; ``Ant(variant="position" | "torque", horizon=1000)``.

    Actions are clipped to [-1, 1]^8. The episode terminates when the trunk height leaves
    (0.2, 1.0) and is truncated at ``horizon`` steps; ``done`` is sticky. Reset is deterministic
    (the home keyframe): with a deterministic policy the return is then a function of the policy
    parameters alone, which is what an EPVF critic learns.

    The env is a pytree (the MJX model is a field of arrays): pass it through ``jax.jit`` /
    ``eqx.filter_jit`` as an argument or close over it; ``jax.jit(env.step)`` does not work
    because a bound method of a module holding arrays is not hashable. Cost on a 2-core CPU
    (jax 0.10.2, mujoco 4.0.0): a few thousand control steps/s at batch >= 64 for "position",
    about 4x that for "torque"; compiling a rollout takes 20-60 s (use a persistent JAX
    compilation cache).
    """

    model: mjx.Model
    home_qpos: Float[Array, "15"]
    home_control: Float[Array, "8"]
    variant: str = eqx.field(static=True)
    horizon: int = eqx.field(static=True)
    n_substeps: int = eqx.field(static=True)
    action_scale: float = eqx.field(static=True)
    observation_size: int = eqx.field(static=True)
    action_size: int = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)
    max_return: float = eqx.field(static=True)

    def __init__(self, variant: str = "position", horizon: int = 1000):
        if variant not in _VARIANTS:
            raise ValueError(f"unknown Ant variant {variant!r}; expected one of {_VARIANTS}")
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        mj_model, home_qpos, home_control = _load_mj_model(variant)
        # This process's own device: MJX's default, `jax.devices()[0]`, is process 0's.
        self.model = mjx.put_model(mj_model, device=jax.local_devices()[0])
        self.home_qpos = jnp.asarray(home_qpos, jnp.float32)
        self.home_control = jnp.asarray(home_control, jnp.float32)
        self.variant = variant
        self.horizon = horizon
        self.n_substeps = 4 if variant == "position" else 1
        self.action_scale = 0.3 if variant == "position" else 1.0
        self.observation_size = _OBS_SIZE
        self.action_size = _N_JOINTS
        self.discrete = False
        self.max_return = float(horizon)

    def reset(self, key: PRNGKeyArray) -> AntState:
        """The home keyframe, at rest.

        ``key`` is accepted for the protocol and unused: the reset is deterministic on purpose, so a
        deterministic policy's return depends on its parameters only.
        """
        del key
        data = mjx.make_data(self.model)
        data = data.replace(qpos=self.home_qpos, ctrl=self.home_control)
        # The last control is the home target (position) or zero torque, i.e. the control that a
        # zero action produces.
        control = self.home_control if self.variant == "position" else jnp.zeros(_N_JOINTS)
        return AntState(
            obs=self._observe(data, control),
            reward=jnp.zeros(()),
            done=jnp.zeros((), bool),
            physics=data,
            step_count=jnp.zeros((), jnp.int32),
            control=control,
            nonfinite=jnp.zeros((), jnp.int32),
        )

    def step(self, state: AntState, action: Float[Array, "8"]) -> AntState:
        """One control step: ``n_substeps`` physics steps at a fixed control."""
        # A diverged policy may emit NaN; as a zero action it cannot poison the physics.
        action = jnp.clip(jnp.nan_to_num(jnp.asarray(action, jnp.float32)), -1.0, 1.0)
        if self.variant == "position":
            control = self.home_control + self.action_scale * action
        else:
            control = action
        data = state.physics.replace(ctrl=control)
        data = jax.lax.fori_loop(
            0, self.n_substeps, lambda _, d: mjx.step(self.model, d), data, unroll=False
        )

        finite = jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel))
        # Keep the last finite physics so that stepping on after the blow-up stays finite.
        data = jax.tree.map(lambda new, old: jnp.where(finite, new, old), data, state.physics)

        velocity = _rotate_into_frame(data.qpos[3:7], data.qvel[0:3])
        reward = tracking_reward(velocity[:2])
        reward = jnp.where(finite & ~state.done, reward, 0.0)

        step_count = state.step_count + 1
        done = state.done | _fallen(data.qpos[2]) | ~finite | (step_count >= self.horizon)
        nonfinite = state.nonfinite + (~finite & ~state.done).astype(jnp.int32)
        return AntState(
            obs=self._observe(data, control, velocity),
            reward=reward,
            done=done,
            physics=data,
            step_count=step_count,
            control=control,
            nonfinite=nonfinite,
        )

    def _observe(
        self,
        data: mjx.Data,
        control: Float[Array, "8"],
        velocity: Float[Array, "3"] | None = None,
    ) -> Float[Array, "34"]:
        return _observation(data.qpos, data.qvel, control, self.home_qpos, jnp, velocity)
