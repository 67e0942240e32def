"""Start a training script as N local processes joined by `jax.distributed`.

    python -m nfn_rl.launch --processes 2 examples/cartpole_epvf.py --out runs/cartpole

Each process runs `python <script> [args]` with `JAX_COORDINATOR_ADDRESS` (127.0.0.1 and a
free port), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set, which
`nfn_rl.initialize_distributed()` (called by the example scripts) joins. When one process
fails, the others exit with an error within the heartbeat timeout; any still running after
that are killed, and the launcher exits with the first failure's code.

SIGTERM (how SLURM and most schedulers stop a job) and SIGINT (Ctrl-C) to the launcher are passed
on to every process; those still running `--stop-timeout` seconds later (default 10) are killed,
so that no process outlives the launcher, which then exits with 128 + the signal's number (143
for SIGTERM, 130 for SIGINT).

Only the standard library is imported here: the launcher itself never starts JAX.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

# Not imported from `nfn_rl.run`: that would import JAX into the launcher.
_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_PROCESS_ID = "JAX_PROCESS_ID"
_HEARTBEAT = "NFN_RL_HEARTBEAT_TIMEOUT_S"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no one listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environments(
    processes: int, port: int, heartbeat_timeout_s: int, base: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """The environment of each of `processes` local processes joined through `port`."""
    base = dict(os.environ if base is None else base)
    return [
        base
        | {
            _COORDINATOR: f"127.0.0.1:{port}",
            _NUM_PROCESSES: str(processes),
            _PROCESS_ID: str(index),
            _HEARTBEAT: str(heartbeat_timeout_s),
        }
        for index in range(processes)
    ]


class _Stopped(Exception):
    """The launcher got a signal that stops the job."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signum)


def _stop(children: list[subprocess.Popen], signum: int, timeout_s: float) -> None:
    """Pass `signum` on to the children, wait up to `timeout_s` for them, then kill the rest."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)
    deadline = time.monotonic() + timeout_s
    while any(child.poll() is None for child in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill(children)


def _kill(children: list[subprocess.Popen]) -> None:
    # SIGKILL: JAX's distributed runtime handles SIGTERM itself (as a preemption notice).
    for child in children:
        if child.poll() is None:
            child.kill()
    for child in children:
        child.wait()


def launch(
    command: list[str],
    *,
    processes: int,
    port: int | None = None,
    heartbeat_timeout_s: int = 60,
    stop_timeout_s: float = 10.0,
) -> int:
    """Run `command` as `processes` joined processes; their exit code (the first failure's,
    else 0), or 128 + the signal's number when SIGTERM or SIGINT stopped the launcher (passed on
    to the processes, which are killed if still running `stop_timeout_s` later)."""
    if processes < 1:
        raise ValueError(f"--processes: must be at least 1, got {processes}")
    port = free_port() if port is None else port
    environments = process_environments(processes, port, heartbeat_timeout_s)
    failed_at, code, reported = None, 0, set()
    # The others notice a failure within the heartbeat timeout, then wait at most twice that to
    # shut down: past both (and a margin) they are killed.
    grace = 3 * heartbeat_timeout_s + 10
    children = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for signum in handlers:
            signal.signal(signum, _raise_stopped)
        for env in environments:
            children.append(subprocess.Popen(command, env=env))
        while True:
            codes = [child.poll() for child in children]
            for index, child_code in enumerate(codes):
                if child_code not in (None, 0) and index not in reported:
                    reported.add(index)
                    print(
                        f"nfn_rl.launch: process {index} exited with code {child_code}"
                        + ("" if failed_at else f"; the others stop within {grace} s"),
                        file=sys.stderr,
                    )
                    if failed_at is None:
                        failed_at, code = time.monotonic(), child_code
            if all(child_code is not None for child_code in codes):
                break
            if failed_at is not None and time.monotonic() - failed_at > grace:
                print("nfn_rl.launch: killing the processes still running", file=sys.stderr)
                _kill(children)
            time.sleep(0.1)
    except (_Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, _Stopped) else signal.SIGINT
        # A second signal while stopping must not leave them running.
        for other in handlers:
            signal.signal(other, signal.SIG_IGN)
        print(
            f"nfn_rl.launch: got {signal.Signals(signum).name}; stopping the processes "
            f"(killed if still running after {stop_timeout_s:g} s)",
            file=sys.stderr,
        )
        _stop(children, signum, stop_timeout_s)
        return 128 + signum
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if code == 0:
        code = next((child.returncode for child in children if child.returncode != 0), 0)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nfn_rl.launch",
        description="Run a training script as N local processes joined by jax.distributed.",
    )
    parser.add_argument("--processes", type=int, required=True, help="how many processes")
    parser.add_argument(
        "--port", type=int, default=None, help="the coordinator's port (default: a free one)"
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=60,
        help="seconds after which a silent process counts as dead (default: 60)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds the processes get to exit after a SIGTERM or SIGINT, before they are "
        "killed (default: 10)",
    )
    parser.add_argument("script", help="the Python script every process runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    options = parser.parse_args(argv)
    if options.processes < 1:
        parser.error(f"--processes: must be at least 1, got {options.processes}")
    return launch(
        [sys.executable, options.script, *options.args],
        processes=options.processes,
        port=options.port,
        heartbeat_timeout_s=options.heartbeat_timeout,
        stop_timeout_s=options.stop_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
