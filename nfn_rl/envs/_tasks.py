"""The Ant task at each machine scale: every algorithm's preset of that name trains on it, so
runs of EPVF and the baselines compare directly."""

from typing import Any

ANT_TASKS: dict[str, dict[str, Any]] = {
    # A test: a few seconds of simulation.
    "smoke": dict(env="ant", horizon=32),
    # A 2-core CPU: the quarter-cost torque variant, 200-step episodes.
    "cpu": dict(env="ant-torque", horizon=200),
    # The paper's task, for a GPU.
    "paper": dict(env="ant", horizon=1000),
}
"""The environment and horizon of each preset scale (`"smoke"`, `"cpu"`, `"paper"`)."""
