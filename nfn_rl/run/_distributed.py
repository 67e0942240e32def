"""Training across processes and hosts with `jax.distributed`: joining the processes, and what
the host loop needs to stay one program (fetching replicated values, one writer, barriers).

Every process runs the same host loop. The arrays of a training state are global: the mesh
spans every process's devices, each process computes the rollouts of its own devices' share of
the environments, and the compiled program exchanges what the updates need. Only process 0
writes files.
"""

import os
import uuid

import jax
import numpy as np
from jax.experimental import multihost_utils
from jaxtyping import PyTree

COORDINATOR_VARIABLE = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_VARIABLE = "JAX_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "JAX_PROCESS_ID"
HEARTBEAT_VARIABLE = "NFN_RL_HEARTBEAT_TIMEOUT_S"
"""The environment variables `nfn_rl.launch` sets for each process (the coordinator's
`host:port`, the process count and this process's index), and the heartbeat timeout in seconds
(after which the others learn that a silent process died)."""

# JAX's own default is 100 s. Shorter stops the others sooner after a hang; much shorter
# declares a process starved of CPU dead (5 s did, on a 2-core machine at load 13).
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
# Environments that `jax.distributed.initialize()` recognises by itself, by one variable each:
# a SLURM job step (`srun`) of more than one task, and Open MPI. The step's own count, not the
# job's: a script started without `srun` inside a many-task allocation is one process, and
# joining would wait for tasks that never start.
_SLURM_TASKS = "SLURM_STEP_NUM_TASKS"
_OPEN_MPI = "OMPI_MCA_orte_hnp_uri"


def _int_variable(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}={value!r}: must be an integer when {COORDINATOR_VARIABLE} is set"
        ) from None


def initialize_distributed() -> bool:
    """Join the other processes of a multi-process run, if this is one; returns whether it is.

    Call it first, before anything computes with JAX. It joins through `jax.distributed`:
    with the variables `nfn_rl.launch` sets (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
    `JAX_PROCESS_ID`), or in a SLURM job step (`srun`) of more than one task or under Open MPI,
    whose variables JAX reads itself. Anywhere else it does nothing and training uses this
    process's devices. A process that stops answering for `NFN_RL_HEARTBEAT_TIMEOUT_S` seconds
    (default 60) makes every other process exit with an error instead of waiting for it.
    """
    if jax.distributed.is_initialized():
        return True
    heartbeat = _int_variable(HEARTBEAT_VARIABLE) if HEARTBEAT_VARIABLE in os.environ else None
    timeouts = {
        "heartbeat_timeout_seconds": heartbeat or DEFAULT_HEARTBEAT_TIMEOUT_S,
        # A finished process waits this long for the others at shutdown.
        "shutdown_timeout_seconds": 2 * (heartbeat or DEFAULT_HEARTBEAT_TIMEOUT_S),
    }
    if os.environ.get(COORDINATOR_VARIABLE):
        jax.distributed.initialize(
            coordinator_address=os.environ[COORDINATOR_VARIABLE],
            num_processes=_int_variable(NUM_PROCESSES_VARIABLE),
            process_id=_int_variable(PROCESS_ID_VARIABLE),
            **timeouts,
        )
        return True
    slurm_tasks = os.environ.get(_SLURM_TASKS, "1")
    if (slurm_tasks.isdigit() and int(slurm_tasks) > 1) or _OPEN_MPI in os.environ:
        jax.distributed.initialize(**timeouts)
        return True
    return False


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0; any single process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process arrives here (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def host_values(tree: PyTree) -> PyTree:
    """`tree` with every array as a NumPy array on this host, the whole value on every
    process.

    Replicated arrays (the training state, metrics) are read from this process's own copy;
    arrays split across processes are gathered, which every process must then call alike.
    """

    def fetch(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)


def new_run_ids(count: int) -> list[str]:
    """`count` new run ids (random UUIDs, as hex): process 0's, in every process."""
    words = np.frombuffer(b"".join(uuid.uuid4().bytes for _ in range(count)), "<u4")
    if jax.process_count() > 1:
        words = np.asarray(multihost_utils.broadcast_one_to_all(words.reshape(count, 4)))
    words = np.asarray(words, "<u4").reshape(count, 4)
    return [uuid.UUID(bytes=row.tobytes()).hex for row in words]
