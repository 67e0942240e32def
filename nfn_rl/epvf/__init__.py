"""Explicit policy-conditioned value functions: the config, the paper's recipe and presets,
critics, their quality metrics and the trainer (perturbations and policies are
`nfn_rl.population`'s)."""

from nfn_rl.epvf._config import EPVFConfig as EPVFConfig
from nfn_rl.epvf._critics import Critic as Critic
from nfn_rl.epvf._critics import FlatCritic as FlatCritic
from nfn_rl.epvf._critics import ProbingCritic as ProbingCritic
from nfn_rl.epvf._critics import UNFCritic as UNFCritic
from nfn_rl.epvf._critics import critic_names as critic_names
from nfn_rl.epvf._critics import critic_options as critic_options
from nfn_rl.epvf._critics import flat_params as flat_params
from nfn_rl.epvf._critics import make_critic as make_critic
from nfn_rl.epvf._critics import register_critic as register_critic
from nfn_rl.epvf._critics import ridge_head as ridge_head
from nfn_rl.epvf._presets import ABLATIONS as ABLATIONS
from nfn_rl.epvf._presets import PRESETS as PRESETS
from nfn_rl.epvf._presets import RECIPE as RECIPE
from nfn_rl.epvf._presets import ant_config as ant_config
from nfn_rl.epvf._quality import cosine as cosine
from nfn_rl.epvf._quality import r_squared as r_squared
from nfn_rl.epvf._quality import spearman as spearman
from nfn_rl.epvf._trainer import EPVFState as EPVFState
from nfn_rl.epvf._trainer import EPVFTrainer as EPVFTrainer
from nfn_rl.epvf._trainer import make_epvf as make_epvf

# Perturbations and policies live in `nfn_rl.population`, which the ES baseline shares; they
# are EPVF's too.
from nfn_rl.population import make_policy as make_policy
from nfn_rl.population import perturb as perturb
from nfn_rl.population import perturb_population as perturb_population
from nfn_rl.population import policy_lr_at as policy_lr_at
