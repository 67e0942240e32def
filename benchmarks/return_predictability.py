"""How much of a perturbed policy's return its parameters predict: the signal an EPVF critic fits.

    python benchmarks/return_predictability.py [--run runs/ant_epvf_unf] [--envs 2048]

Each iteration, EPVF fits V(theta) to the returns of `num_envs` perturbations of one policy and
ascends it. That only works if the returns are a learnable function of the perturbed parameters
at that sample size. This script measures it: around a policy it draws two independent clouds of
``--envs`` perturbations (uniform noise U(-s|w|, s|w|), the recipe's), rolls each out once on the
native backend, fits ridge regressions of the returns on the standardised parameters of the first
cloud, and reports the correlation of their predictions with the second cloud's returns (held
out), for the best of a few ridge strengths. A held-out correlation near 0 means that at this
sample size the returns look like noise to a linear critic, and the policy gradient a critic
gives is mostly noise too; a nonlinear critic that generalises does no better in practice (an
MLP critic fitted to the same cloud reaches a training R^2 of 1 and a held-out R^2 below 0).

The policies: the `cpu` preset's initial policy (seed 0) on both Ant variants (torque, horizon
200, and position, horizon 100: the same 2 s of simulated time), and, with ``--run``, the trained
policy of a run directory on that run's Ant. Cost on 2 CPU cores: about a minute per policy and
noise scale at 2048 envs. The last line is
``held-out correlation, trained policy (noise 0.3): X.XXX``, or the initial torque policy's
without ``--run``.
"""

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import mujoco
import numpy as np
import tyro
from _machine import machine_line

import nfn_rl
from nfn_rl import flat_params, perturb_population
from nfn_rl.envs import Ant, NativeAntRollout


@dataclasses.dataclass(frozen=True)
class Args:
    """Attributes:
    run: a run directory whose trained policy is measured too (on its own Ant and horizon).
    envs: perturbations per cloud (the critic's sample size).
    scales: noise scales s of U(-s|w|, s|w|).
    ridge: ridge strengths tried (the best held-out correlation is reported).
    policy_width: hidden width of the initial policies (default: the `cpu` preset's).
    policy_depth: hidden layers of the initial policies (default: the `cpu` preset's).
    """

    run: Path | None = None
    envs: int = 2048
    scales: tuple[float, ...] = (0.1, 0.3, 1.0)
    ridge: tuple[float, ...] = (1e2, 1e3, 1e4)
    policy_width: int | None = None
    policy_depth: int | None = None


def _cloud(native, policy, num, scale, key):
    population = perturb_population(policy, num, key=key, noise="uniform_scaled", scale=scale)
    params, static = eqx.partition(population, eqx.is_array)
    _, returns = native.episode_lengths_and_returns(params, static)
    flat = jax.vmap(lambda p: flat_params(eqx.combine(p, static)))(params)
    return np.asarray(flat, np.float64), returns.astype(np.float64)


def held_out_correlation(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], ridge: float
) -> float:
    """Correlation of a ridge regression's predictions with held-out returns (dual form: fewer
    samples than parameters)."""
    (x, y), (x_test, y_test) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-12
    z, z_test = (x - mean) / std, (x_test - mean) / std
    alpha = np.linalg.solve(z @ z.T + ridge * np.eye(len(y)), y - y.mean())
    prediction = z_test @ (z.T @ alpha)
    if np.std(prediction) == 0 or np.std(y_test) == 0:
        return 0.0
    return float(np.corrcoef(prediction, y_test)[0, 1])


def measure(name, env, policy, args) -> dict[float, float]:
    correlations = {}
    with NativeAntRollout(env) as native:
        for scale in args.scales:
            train = _cloud(native, policy, args.envs, scale, jax.random.key(1))
            test = _cloud(native, policy, args.envs, scale, jax.random.key(2))
            best = max(held_out_correlation(train, test, ridge) for ridge in args.ridge)
            correlations[scale] = best
            returns = train[1]
            print(
                f"{name:34s} {scale:5.1f} {returns.mean():10.3g} {returns.std():10.3g} "
                f"{returns.max():8.3g} {best:10.3f}",
                flush=True,
            )
    return correlations


def _initial_policy(env, args):
    sizes = {
        name: value
        for name in ("policy_width", "policy_depth")
        if (value := getattr(args, name)) is not None
    }
    env_name = "ant" if env.variant == "position" else "ant-torque"
    config = nfn_rl.ant_config("cpu", env=env_name, horizon=env.horizon, **sizes)
    trainer = nfn_rl.make_trainer(config)
    return trainer.policy(trainer.init(jax.random.key(0)))


def main(args: Args) -> None:
    nfn_rl.enable_compilation_cache()
    print(machine_line())
    print(
        f"jax {jax.__version__}, mujoco {mujoco.__version__}; {args.envs} perturbations per cloud"
    )
    print(
        f"{'policy':34s} {'noise':>5s} {'R mean':>10s} {'R std':>10s} {'R max':>8s} "
        f"{'held-out r':>10s}"
    )
    last = None
    for variant, horizon in (("torque", 200), ("position", 100)):
        env = Ant(variant, horizon=horizon)
        found = measure(f"initial, {variant} h{horizon}", env, _initial_policy(env, args), args)
        if variant == "torque":
            last = ("initial torque policy", found)
    if args.run is not None:
        trainer, state, _ = nfn_rl.load_run(args.run)
        env = trainer.env
        if not isinstance(env, Ant):
            raise SystemExit(f"{args.run}: not an Ant run ({type(env).__name__})")
        policy = trainer.policy(state)
        name = f"trained ({args.run.name}), {env.variant} h{env.horizon}"
        last = ("trained policy", measure(name, Ant(env.variant, env.horizon), policy, args))
    label, found = last
    scale = 0.3 if 0.3 in found else next(iter(found))
    print(f"held-out correlation, {label} (noise {scale}): {found[scale]:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
