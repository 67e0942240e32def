"""Learning from perturbed policies, what EPVF and the ES baseline share: the perturbation
config, parameter perturbations, deterministic MLP policies, fitness shaping and the ES
gradient estimate, and the abstract `PopulationTrainer` that rolls a population out on every
device."""

from nfn_rl.population._config import BACKENDS as BACKENDS
from nfn_rl.population._config import SCHEDULES as SCHEDULES
from nfn_rl.population._config import PerturbationConfig as PerturbationConfig
from nfn_rl.population._fitness import SHAPINGS as SHAPINGS
from nfn_rl.population._fitness import centered_ranks as centered_ranks
from nfn_rl.population._fitness import es_estimate as es_estimate
from nfn_rl.population._fitness import es_gradient as es_gradient
from nfn_rl.population._fitness import ranks as ranks
from nfn_rl.population._fitness import shape_returns as shape_returns
from nfn_rl.population._fitness import standardize as standardize
from nfn_rl.population._normalize import MIN_STD as MIN_STD
from nfn_rl.population._normalize import ObservationNormalizer as ObservationNormalizer
from nfn_rl.population._normalize import fold_observations as fold_observations
from nfn_rl.population._perturb import NOISES as NOISES
from nfn_rl.population._perturb import perturb as perturb
from nfn_rl.population._perturb import perturb_population as perturb_population
from nfn_rl.population._policy import make_policy as make_policy
from nfn_rl.population._presets import ANT_POPULATIONS as ANT_POPULATIONS
from nfn_rl.population._presets import POPULATION_RECIPE as POPULATION_RECIPE
from nfn_rl.population._presets import population_fields as population_fields
from nfn_rl.population._trainer import ENVS_AXIS as ENVS_AXIS
from nfn_rl.population._trainer import Population as Population
from nfn_rl.population._trainer import PopulationTrainer as PopulationTrainer
from nfn_rl.population._trainer import policy_lr_at as policy_lr_at
from nfn_rl.population._trainer import policy_optimizer as policy_optimizer
from nfn_rl.population._trainer import population_setup as population_setup
from nfn_rl.population._trainer import with_policy_lr as with_policy_lr
