"""nfn: weight-space layers for JAX and Equinox.

A *weight space* is a parameter pytree plus a spec saying which permutation acts on each axis of
each leaf. `nfn` provides the permutation group action, the complete bases of equivariant and
invariant linear maps (Universal Neural Functionals) for any such space, pointwise layers and
ready-made encoders. Spaces derived from Equinox models also record each hidden neuron's sign
or scale symmetry (odd or positively homogeneous activations), for canonical forms and
augmentation.
"""

from nfn._action import (
    Permutation as Permutation,
)
from nfn._action import (
    compose_permutations as compose_permutations,
)
from nfn._action import (
    identity_permutation as identity_permutation,
)
from nfn._action import (
    invert_permutation as invert_permutation,
)
from nfn._action import (
    permute as permute,
)
from nfn._action import (
    sample_permutation as sample_permutation,
)
from nfn._attention import EquivariantAttention as EquivariantAttention
from nfn._blocks import Residual as Residual
from nfn._derive import weight_space as weight_space
from nfn._encodings import FourierFeatures as FourierFeatures
from nfn._encodings import PositionalEncoding as PositionalEncoding
from nfn._encodings import sinusoidal_table as sinusoidal_table
from nfn._equivariant import (
    EquivariantLinear as EquivariantLinear,
)
from nfn._equivariant import (
    count_equivariant_terms as count_equivariant_terms,
)
from nfn._features import (
    from_features as from_features,
)
from nfn._features import (
    stack as stack,
)
from nfn._features import (
    to_features as to_features,
)
from nfn._features import (
    unstack as unstack,
)
from nfn._invariant import InvariantLinear as InvariantLinear
from nfn._models import (
    EquivariantNetwork as EquivariantNetwork,
)
from nfn._models import (
    InvariantEncoder as InvariantEncoder,
)
from nfn._models import (
    StatisticsFeaturizer as StatisticsFeaturizer,
)
from nfn._pointwise import (
    ChannelLayerNorm as ChannelLayerNorm,
)
from nfn._pointwise import (
    FeatureDropout as FeatureDropout,
)
from nfn._pointwise import (
    Pointwise as Pointwise,
)
from nfn._probes import ProbeFeatures as ProbeFeatures
from nfn._spec import LeafSpace as LeafSpace
from nfn._spec import NeuronSymmetry as NeuronSymmetry
from nfn._spec import Packed as Packed
from nfn._spec import WeightSpace as WeightSpace
from nfn._symmetry import (
    SymmetryFactors as SymmetryFactors,
)
from nfn._symmetry import (
    apply_symmetry as apply_symmetry,
)
from nfn._symmetry import (
    canonicalize as canonicalize,
)
from nfn._symmetry import (
    sample_symmetry as sample_symmetry,
)

__version__ = "0.1.0"
