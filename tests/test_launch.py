"""`python -m nfn_rl.launch` stops its processes with it: SIGTERM and SIGINT reach every child,
none outlives the launcher, and its exit code names the signal. The children here are plain
Python scripts (no JAX), so each case takes about a second."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).parent.parent

CHILD = """
import os, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
(out / f"pid_{os.environ['JAX_PROCESS_ID']}").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (one that exited, not yet reaped)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    "signum, children",
    [(signal.SIGTERM, "exit"), (signal.SIGTERM, "ignore"), (signal.SIGINT, "exit")],
)
def test_a_signal_to_the_launcher_stops_every_child(tmp_path, signum, children):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "nfn_rl.launch", "--processes", "2", "--stop-timeout", "1",
         str(script), str(tmp_path), children],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid_files = [tmp_path / f"pid_{index}" for index in range(2)]
    pids = []
    try:
        deadline = time.monotonic() + 30
        while not all(f.exists() and f.read_text() for f in pid_files):
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.05)
        pids = [int(f.read_text()) for f in pid_files]
        launcher.send_signal(signum)
        _, stderr = launcher.communicate(timeout=30)
        # 128 + the signal's number, as a shell reports a process the signal stopped.
        assert launcher.returncode == 128 + signum, stderr
        assert signal.Signals(signum).name in stderr
        assert [pid for pid in pids if _running(pid)] == []
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
