"""What every trainer shares: the abstract `Trainer`, the config convention, the host loop,
checkpoints, metrics files, the FIFO buffer, the non-finite-step guard, and joining the processes
of a multi-process run."""

from nfn_rl.run._buffer import FIFOBuffer as FIFOBuffer
from nfn_rl.run._buffer import make_buffer as make_buffer
from nfn_rl.run._cache import enable_compilation_cache as enable_compilation_cache
from nfn_rl.run._checkpoint import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from nfn_rl.run._checkpoint import CheckpointError as CheckpointError
from nfn_rl.run._checkpoint import load_checkpoint as load_checkpoint
from nfn_rl.run._checkpoint import read_header as read_header
from nfn_rl.run._config import TrainConfig as TrainConfig
from nfn_rl.run._distributed import initialize_distributed as initialize_distributed
from nfn_rl.run._distributed import is_main_process as is_main_process
from nfn_rl.run._loop import RUN_FILES as RUN_FILES
from nfn_rl.run._loop import RunDirectoryError as RunDirectoryError
from nfn_rl.run._loop import holds_run as holds_run
from nfn_rl.run._loop import init_states as init_states
from nfn_rl.run._loop import run_chunk as run_chunk
from nfn_rl.run._loop import run_dirs as run_dirs
from nfn_rl.run._loop import run_training as run_training
from nfn_rl.run._loop import seed_keys as seed_keys
from nfn_rl.run._optim import skip_nonfinite as skip_nonfinite
from nfn_rl.run._optim import skipped_steps as skipped_steps
from nfn_rl.run._report import METRIC_COLUMNS as METRIC_COLUMNS
from nfn_rl.run._report import read_metrics as read_metrics
from nfn_rl.run._trainer import CRITIC_QUALITY_METRICS as CRITIC_QUALITY_METRICS
from nfn_rl.run._trainer import UPDATE_METRICS as UPDATE_METRICS
from nfn_rl.run._trainer import Trainer as Trainer
from nfn_rl.run._trainer import TrainState as TrainState
from nfn_rl.run._trainer import default_device_mesh as default_device_mesh
from nfn_rl.run._trainer import return_statistics as return_statistics
from nfn_rl.run._trainer import static_part as static_part
