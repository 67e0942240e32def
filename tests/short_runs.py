"""What the tests' short training runs share: how often they log, evaluate and checkpoint, and
the small networks of most of them. Each test's config adds the sizes its run needs."""

SMALL_NETWORKS = dict(policy_width=8, critic_width=16)
"""The policy and critic MLP widths of the tests' smallest EPVF runs."""


def cadence(
    *, log: int, checkpoint: int, evaluate: int | None = None, episodes: int | None = None
) -> dict[str, int]:
    """The host loop's fields of a short run: a jitted chunk (and a metrics row flush) every
    `log` iterations, an evaluation of `episodes` episodes (default: the config's) every
    `evaluate` iterations (default: `log`), and a checkpoint every `checkpoint`."""
    fields = dict(
        log_interval=log,
        eval_interval=log if evaluate is None else evaluate,
        checkpoint_interval=checkpoint,
    )
    return fields if episodes is None else fields | dict(eval_episodes=episodes)
