"""PPO, SAC and ES baselines on the same environments, trainer design and run format as EPVF.

ES (OpenAI-ES) rolls out the populations EPVF does and steps without a critic: the anchor an
EPVF critic must beat.

Written for this project with Equinox and Optax (brax's trainers, the first choice, call
`jax.device_put_replicated`, which jax 0.10 removed). Both learn from batches of auto-resetting
environments, bootstrap through truncation at the horizon, and evaluate the deterministic policy
with the same `nfn_rl.episode_return` as EPVF.
"""

from nfn_rl.baselines._config import BaselineConfig as BaselineConfig
from nfn_rl.baselines._config import PPOConfig as PPOConfig
from nfn_rl.baselines._config import SACConfig as SACConfig
from nfn_rl.baselines._envs import EnvBatch as EnvBatch
from nfn_rl.baselines._envs import Transition as Transition
from nfn_rl.baselines._envs import reset_batch as reset_batch
from nfn_rl.baselines._envs import step_batch as step_batch
from nfn_rl.baselines._es import ESConfig as ESConfig
from nfn_rl.baselines._es import ESState as ESState
from nfn_rl.baselines._es import ESTrainer as ESTrainer
from nfn_rl.baselines._es import make_es as make_es
from nfn_rl.baselines._losses import actor_loss as actor_loss
from nfn_rl.baselines._losses import gae as gae
from nfn_rl.baselines._losses import ppo_loss as ppo_loss
from nfn_rl.baselines._losses import q_loss as q_loss
from nfn_rl.baselines._losses import soft_q_target as soft_q_target
from nfn_rl.baselines._losses import temperature_loss as temperature_loss
from nfn_rl.baselines._networks import Categorical as Categorical
from nfn_rl.baselines._networks import DeterministicPolicy as DeterministicPolicy
from nfn_rl.baselines._networks import Normalizer as Normalizer
from nfn_rl.baselines._networks import TanhGaussian as TanhGaussian
from nfn_rl.baselines._ppo import PPOState as PPOState
from nfn_rl.baselines._ppo import PPOTrainer as PPOTrainer
from nfn_rl.baselines._ppo import make_ppo as make_ppo
from nfn_rl.baselines._presets import ALGORITHMS as ALGORITHMS
from nfn_rl.baselines._presets import BASELINE_PRESETS as BASELINE_PRESETS
from nfn_rl.baselines._presets import ES_SETTINGS as ES_SETTINGS
from nfn_rl.baselines._presets import baseline_config as baseline_config
from nfn_rl.baselines._presets import es_fields as es_fields
from nfn_rl.baselines._sac import SACState as SACState
from nfn_rl.baselines._sac import SACTrainer as SACTrainer
from nfn_rl.baselines._sac import make_sac as make_sac
