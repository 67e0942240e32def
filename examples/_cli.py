"""What the example scripts share: every config field on the command line over a preset's
defaults, the training of a script's seeds, and the closing report of a run."""

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import equinox as eqx
import jax
import tyro

import nfn_rl
from nfn_rl.population import PopulationTrainer

T = TypeVar("T")


EVALUATE_FLAGS = ("--evaluate", "--out", "--progress", "--no-progress")
"""The flags that apply under `--evaluate`: everything else comes from the checkpoint."""


def parse(
    args_type: type[T], default_for: Callable[..., T], selectors: tuple[str, ...], argv: list[str]
) -> T:
    """`tyro.cli(args_type)` whose defaults come from the starting point the `selectors` flags
    (e.g. `--preset`, `--critic`) choose: `default_for(**selector values)`.

    Every config field is then a flag (`--config.num-envs 1024`) that overrides the preset.
    Under `--evaluate` only `EVALUATE_FLAGS` are accepted.
    """
    if "--evaluate" in argv:
        for token in argv:
            flag = token.split("=")[0]
            if flag.startswith("--") and flag not in EVALUATE_FLAGS:
                raise ValueError(
                    f"{flag} does not apply under --evaluate: the config, seed and env steps "
                    "come from the checkpoint"
                )
    fields = {field.name: field.default for field in dataclasses.fields(args_type)}
    pre = argparse.ArgumentParser(add_help=False)
    for name in selectors:
        pre.add_argument("--" + name.replace("_", "-"), dest=name, default=fields[name])
    chosen, _ = pre.parse_known_args(argv)
    default = default_for(**vars(chosen))
    # The default's own type: a subclass of `args_type` may narrow the config's type.
    return tyro.cli(type(default), default=default, args=argv)


def with_config_type(args_type: type[T], config_type: type) -> type[T]:
    """`args_type` with its `config` field narrowed to `config_type` (default
    `config_type()`), so that a script whose `--algo` chooses among configs shows the chosen
    config's fields as the flags."""
    narrowed = dataclasses.make_dataclass(
        f"{config_type.__name__}{args_type.__name__}",
        [("config", config_type, dataclasses.field(default=config_type()))],
        bases=(args_type,),
        frozen=True,
    )
    summary = args_type.__doc__.splitlines()[0].rstrip(".")
    narrowed.__doc__ = f"{summary} (every {config_type.__name__} field is a flag)."
    return narrowed


def run(main: Callable[[], None]) -> None:
    """`main()`, with a bad value or an unusable run directory reported in one line naming the
    field or file; `--debug` (or `NFN_RL_DEBUG=1`) shows the traceback instead.

    Under `python -m nfn_rl.launch`, SLURM or Open MPI the script first joins the other
    processes (`nfn_rl.initialize_distributed`); they all compute alike, and only process 0
    prints its report.
    """
    debug = "--debug" in sys.argv or os.environ.get("NFN_RL_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        if nfn_rl.initialize_distributed() and not nfn_rl.is_main_process():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open until the process ends)
        main()
    except (ValueError, FileNotFoundError) as error:
        if debug:
            raise
        raise SystemExit(f"error: {error} (--debug shows the traceback)") from None


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The flags of a script that trains the seeds of one config into a run directory; the
    script's own flags subclass it and add `config`.

    Attributes:
        seed: the first seed.
        seeds: how many seeds to train (seed, seed + 1, ...), in one compiled program; each
            gets OUT/seed_<s> when there is more than one.
        out: run directory.
        resume: continue the run(s) in OUT from their checkpoints.
        overwrite: start over in OUT, moving a run there into OUT/replaced_<time>/.
        evaluate: don't train: load OUT's checkpoint(s) and report the policies' returns.
        progress: show a progress bar.
    """

    seed: int = 0
    seeds: int = 1
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    evaluate: bool = False
    progress: bool = True


def train(args: RunFlags, out: Path, **options) -> None:
    """Train `args.config` for `args.seeds` seeds from `args.seed` into `out`, resuming or
    overwriting as the flags say, unless `--evaluate` (the run in `out` is then only
    reported). `options` go to `nfn_rl.train_seeds` as they are."""
    if args.evaluate:
        return
    nfn_rl.train_seeds(
        args.config,
        seeds=range(args.seed, args.seed + args.seeds),
        out_dir=out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=args.progress,
        **options,
    )


def seed_runs(out: Path) -> list[Path]:
    """The run directories under `out`: `out` itself, or its `seed_<s>` folders by seed."""
    if (out / "checkpoint.eqx").is_file():
        return [out]
    return sorted(out.glob("seed_*"), key=lambda run: (len(run.name), run.name))


def report(out: Path, *, start: float) -> None:
    """Evaluate the trained policy of each seed's run directory under `out` once, from its
    checkpoint, and print what the number means.

    For EPVF and ES the number is the mean return of the trained policy's perturbations (the
    training noise; `nfn_rl.population.PopulationTrainer.neighbourhood_return`) with its
    standard error, beside the exact deterministic episode: one episode of a torque Ant policy
    swings between 0 and 20 from one evaluation to the next, the mean of 2048 does not.
    """
    for run in seed_runs(out):
        trainer, state, header = nfn_rl.load_run(run)
        best = trainer.env.max_return
        exact = float(_episode_return(trainer.env, trainer.policy(state), jax.random.key(0)))
        if isinstance(trainer, PopulationTrainer):
            mean, error = (float(x) for x in _neighbourhood(trainer, state, jax.random.key(1)))
            measure = (
                f"eval return {mean:.4g} ± {error:.2g} of {best:.0f} ({100 * mean / best:.0f}%; "
                f"mean ± standard error over {trainer.config.num_envs} perturbations of the "
                f"trained policy, one episode each; the unperturbed policy's episode: {exact:.4g})"
            )
        else:
            measure = f"eval return {exact:.4g} of {best:.0f} ({100 * exact / best:.0f}%)"
        print(
            f"seed {header['seed']}: {measure} after {header['env_steps']:,} env steps "
            f"(iteration {header['iteration']} of {trainer.config.iterations}); "
            f"{time.perf_counter() - start:.0f} s in this process; run in {run}"
        )


@eqx.filter_jit
def episode_returns(env, policy, keys):
    """One episode of `policy` per key (`nfn_rl.episode_return`), in one compiled call."""
    return jax.vmap(lambda k: nfn_rl.episode_return(env, policy, k))(keys)


@eqx.filter_jit
def _episode_return(env, policy, key):
    return nfn_rl.episode_return(env, policy, key)


@eqx.filter_jit
def _neighbourhood(trainer, state, key):
    return trainer.neighbourhood_return(state, key=key)
