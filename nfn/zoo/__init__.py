"""An offline model zoo for weight-space research: small CNNs trained on scikit-learn's digits,
28x28 digit images made from them and SIRENs fitted to images (needs the `zoo` extra, `pip
install -e ".[zoo]"`, to generate; not to load), and loaders for published zoo layouts.
"""

from nfn.zoo._cnn import ACTIVATIONS as ACTIVATIONS
from nfn.zoo._cnn import ZooCNN as ZooCNN
from nfn.zoo._cnn import cnn_space as cnn_space
from nfn.zoo._format import FORMAT_VERSION as FORMAT_VERSION
from nfn.zoo._format import Zoo as Zoo
from nfn.zoo._format import ZooFormatError as ZooFormatError
from nfn.zoo._format import generate_cnn_zoo as generate_cnn_zoo
from nfn.zoo._format import load_zoo as load_zoo
from nfn.zoo._format import save_zoo as save_zoo
from nfn.zoo._generate import HPARAMS as HPARAMS
from nfn.zoo._generate import ZooConfig as ZooConfig
from nfn.zoo._generate import load_digits_split as load_digits_split
from nfn.zoo._images import AffineDigitsConfig as AffineDigitsConfig
from nfn.zoo._images import affine_digits as affine_digits
from nfn.zoo._inr import OFFSET as OFFSET
from nfn.zoo._inr import augment_siren as augment_siren
from nfn.zoo._inr import decode as decode
from nfn.zoo._inr import fit_sirens as fit_sirens
from nfn.zoo._inr import pixel_grid as pixel_grid
from nfn.zoo._inr import psnr as psnr
from nfn.zoo._inr import siren as siren
from nfn.zoo._inr import transform_siren as transform_siren
from nfn.zoo._published import PooledCNN as PooledCNN
from nfn.zoo._published import load_inr_splits as load_inr_splits
from nfn.zoo._published import load_small_cnn_zoo as load_small_cnn_zoo
from nfn.zoo._published import mlp_from_state_dict as mlp_from_state_dict
from nfn.zoo._published import pooled_cnn_space as pooled_cnn_space
from nfn.zoo._published import siren_from_state_dict as siren_from_state_dict
