"""ddc: Dynamic DropConnect and its baselines as drop-in PyTorch layers.

Only ``torch`` is imported here; data, training, storage and the CLI import
their own dependencies when used.
"""

from . import functional
from .apply import Handle, apply, attach, detach, disabled, make_method, method_options, regularized_layers, select_layers
from .methods import METHODS, Dropout, DropConnect, DynamicDropConnect, LayerMethod, MaskRNG, Standout, WeightDrop

__all__ = [
    "functional",
    "apply",
    "attach",
    "detach",
    "disabled",
    "Handle",
    "make_method",
    "method_options",
    "regularized_layers",
    "select_layers",
    "METHODS",
    "LayerMethod",
    "WeightDrop",
    "MaskRNG",
    "Dropout",
    "DropConnect",
    "DynamicDropConnect",
    "Standout",
]

__version__ = "0.1.0"
