"""Environments implementing `nfn_rl.envs.Environment`, and episode returns of policies."""

from nfn_rl.envs._ant import Ant as Ant
from nfn_rl.envs._cartpole import Cartpole as Cartpole
from nfn_rl.envs._gym_tasks import NATIVE_GYMNASIUM_TASKS as NATIVE_GYMNASIUM_TASKS
from nfn_rl.envs._gym_tasks import NativeGymnasiumRollout as NativeGymnasiumRollout
from nfn_rl.envs._gymnasium import GymnasiumEnv as GymnasiumEnv
from nfn_rl.envs._gymnasium import GymnasiumVectorRollout as GymnasiumVectorRollout
from nfn_rl.envs._host import NativeAnt as NativeAnt
from nfn_rl.envs._native import NativeAntRollout as NativeAntRollout
from nfn_rl.envs._native import NativeTrajectory as NativeTrajectory
from nfn_rl.envs._protocol import Environment as Environment
from nfn_rl.envs._protocol import EnvState as EnvState
from nfn_rl.envs._registry import env_names as env_names
from nfn_rl.envs._registry import make_env as make_env
from nfn_rl.envs._registry import register_env as register_env
from nfn_rl.envs._render import RenderingUnavailable as RenderingUnavailable
from nfn_rl.envs._render import record_episode as record_episode
from nfn_rl.envs._render import save_episode_animation as save_episode_animation
from nfn_rl.envs._render import save_episode_plot as save_episode_plot
from nfn_rl.envs._rollout import EpisodeSummary as EpisodeSummary
from nfn_rl.envs._rollout import episode_length_and_return as episode_length_and_return
from nfn_rl.envs._rollout import episode_return as episode_return
from nfn_rl.envs._rollout import episode_summary as episode_summary
from nfn_rl.envs._rollout import observation_statistics as observation_statistics
from nfn_rl.envs._rollout import policy_action as policy_action
from nfn_rl.envs._tasks import ANT_TASKS as ANT_TASKS
