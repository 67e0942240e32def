"""nfn_rl: explicit policy-conditioned value functions (EPVFs) at scale."""

from nfn_rl._buffer import ReplayBuffer as ReplayBuffer
from nfn_rl._buffer import make_buffer as make_buffer
from nfn_rl._config import EPVFConfig as EPVFConfig
from nfn_rl._critics import Critic as Critic
from nfn_rl._critics import FlatCritic as FlatCritic
from nfn_rl._critics import critic_names as critic_names
from nfn_rl._critics import flat_params as flat_params
from nfn_rl._critics import make_critic as make_critic
from nfn_rl._critics import register_critic as register_critic
from nfn_rl._perturb import perturb as perturb
from nfn_rl._perturb import perturb_population as perturb_population
from nfn_rl._policy import make_policy as make_policy
from nfn_rl._rollout import episode_length_and_return as episode_length_and_return
from nfn_rl._rollout import episode_return as episode_return
from nfn_rl._rollout import policy_action as policy_action
from nfn_rl._train import EPVFTrainer as EPVFTrainer
from nfn_rl._train import TrainState as TrainState
from nfn_rl._train import load_checkpoint as load_checkpoint
from nfn_rl._train import make_train as make_train
from nfn_rl._train import policy_lr_at as policy_lr_at
from nfn_rl._train import train as train
from nfn_rl.envs import env_names as env_names
from nfn_rl.envs import make_env as make_env
from nfn_rl.envs import register_env as register_env
