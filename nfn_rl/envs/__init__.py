"""Environments implementing `nfn_rl.envs.Environment`."""

from nfn_rl.envs._ant import Ant as Ant
from nfn_rl.envs._protocol import Environment as Environment, EnvState as EnvState
