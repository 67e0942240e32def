"""The line every benchmark prints first: timings depend on the machine and on what else runs."""

import os
import platform


def machine_line() -> str:
    """The platform, processor, CPU count and the 1-minute load average."""
    return (
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
