"""ddc: Dynamic DropConnect and its baselines as drop-in PyTorch layers.

Only ``torch`` is imported here; data, training, storage and the CLI import
their own dependencies when used.
"""

from . import functional
from .apply import Handle, apply, make_method, method_options, regularized_layers, select_layers
from .methods import METHODS, Dropout, DropConnect, DynamicDropConnect, LayerMethod, MaskRNG, Standout

__all__ = [
    "functional",
    "apply",
    "Handle",
    "make_method",
    "method_options",
    "regularized_layers",
    "select_layers",
    "METHODS",
    "LayerMethod",
    "MaskRNG",
    "Dropout",
    "DropConnect",
    "DynamicDropConnect",
    "Standout",
]

__version__ = "0.1.0"
