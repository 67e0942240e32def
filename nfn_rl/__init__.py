"""nfn_rl: explicit policy-conditioned value functions (EPVFs) at scale, with PPO and SAC
baselines.

The package is layered: `nfn_rl.envs` (environments, episode returns) at the bottom,
`nfn_rl.run` (the abstract trainer, host loop, checkpoints) above it, and `nfn_rl.epvf` and
`nfn_rl.baselines` side by side on top.
"""

from nfn_rl._api import CONFIGS as CONFIGS
from nfn_rl._api import config_from_dict as config_from_dict
from nfn_rl._api import load_run as load_run
from nfn_rl._api import make_trainer as make_trainer
from nfn_rl._api import train as train
from nfn_rl._api import train_seeds as train_seeds
from nfn_rl.envs import env_names as env_names
from nfn_rl.envs import episode_length_and_return as episode_length_and_return
from nfn_rl.envs import episode_return as episode_return
from nfn_rl.envs import make_env as make_env
from nfn_rl.envs import observation_statistics as observation_statistics
from nfn_rl.envs import policy_action as policy_action
from nfn_rl.envs import register_env as register_env
from nfn_rl.epvf import ABLATIONS as ABLATIONS
from nfn_rl.epvf import PRESETS as PRESETS
from nfn_rl.epvf import RECIPE as RECIPE
from nfn_rl.epvf import Critic as Critic
from nfn_rl.epvf import EPVFConfig as EPVFConfig
from nfn_rl.epvf import EPVFState as EPVFState
from nfn_rl.epvf import EPVFTrainer as EPVFTrainer
from nfn_rl.epvf import FlatCritic as FlatCritic
from nfn_rl.epvf import ProbingCritic as ProbingCritic
from nfn_rl.epvf import UNFCritic as UNFCritic
from nfn_rl.epvf import ant_config as ant_config
from nfn_rl.epvf import critic_names as critic_names
from nfn_rl.epvf import critic_options as critic_options
from nfn_rl.epvf import flat_params as flat_params
from nfn_rl.epvf import make_critic as make_critic
from nfn_rl.epvf import make_policy as make_policy
from nfn_rl.epvf import perturb as perturb
from nfn_rl.epvf import perturb_population as perturb_population
from nfn_rl.epvf import policy_lr_at as policy_lr_at
from nfn_rl.epvf import register_critic as register_critic
from nfn_rl.run import FIFOBuffer as FIFOBuffer
from nfn_rl.run import Trainer as Trainer
from nfn_rl.run import TrainState as TrainState
from nfn_rl.run import enable_compilation_cache as enable_compilation_cache
from nfn_rl.run import initialize_distributed as initialize_distributed
from nfn_rl.run import is_main_process as is_main_process
from nfn_rl.run import make_buffer as make_buffer
from nfn_rl.run import read_metrics as read_metrics
