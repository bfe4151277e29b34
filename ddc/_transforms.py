"""What ddc needs to know about torch.func transforms, backward passes and DistributedDataParallel.

Private torch APIs, kept in this one file: torch offers no public way to ask
whether a functorch transform or a backward pass is running, to read the plain tensor behind a
transform's wrapper, or which DDP module's forward is running.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Optional

import torch
from torch import Tensor

_functorch = getattr(torch._C, "_functorch", None)


def functorch_active() -> bool:
    """Whether a torch.func transform (grad, vmap, ...) is running.

    Raises:
        Nothing (False where torch lacks the private check).
    """
    check = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(check()) if check is not None else False


def eager_only(function: Callable) -> Callable:
    """``function``, run eagerly (not traced) inside ``torch.compile``; as it is where nothing compiles.

    ``torch.compiler.disable`` itself, but made on first use under a loaded
    ``torch._dynamo``: importing dynamo (and sympy) would make ``import ddc``
    and every uncompiled step pay for a compiler they do not use.

    Raises:
        Nothing of its own.
    """
    disabled = None

    @functools.wraps(function)
    def run(*args, **kwargs):
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:  # nothing can be compiling
            return function(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(function)
        return disabled(*args, **kwargs)

    return run


def backward_active() -> bool:
    """Whether this thread is inside a backward pass (where ``torch.utils.checkpoint`` recomputes forwards).

    Raises:
        Nothing (False where torch lacks the private check).
    """
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` is running (its random ops then follow its ``randomness``).

    Raises:
        Nothing of its own (False where torch lacks functorch).
    """
    if _functorch is None or not functorch_active():
        return False
    vmap = _functorch.TransformType.Vmap
    return any(level.key() == vmap for level in _functorch.get_interpreter_stack() or ())


def plain(tensor: Tensor) -> Tensor:
    """The ordinary tensor behind torch.func wrappers, summed over vmap's batch dimensions.

    Inside ``torch.func.grad`` a gradient is a wrapper of the real one; inside
    ``vmap`` it holds one gradient per vmapped entry (per example), whose sum
    is the batch's gradient. A method keeps this plain value as its signal, so
    nothing it stores outlives the transform.

    Args:
        tensor: any shape; a wrapper's vmap batch dimensions are summed away.
    Raises:
        Nothing of its own.
    """
    if _functorch is None:
        return tensor
    while _functorch.is_functorch_wrapped_tensor(tensor):
        bdim = _functorch.maybe_get_bdim(tensor)
        tensor = _functorch.get_unwrapped(tensor)
        if bdim >= 0:
            tensor = tensor.sum(bdim)
    return tensor


def ddp_process_group():
    """The process group of the DistributedDataParallel module whose forward is running, or None.

    Raises:
        Nothing (None where torch.distributed is unavailable or not initialised).
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    from torch.nn.parallel import DistributedDataParallel

    active = getattr(DistributedDataParallel, "_get_active_ddp_module", None)
    module: Optional[DistributedDataParallel] = active() if active is not None else None
    return None if module is None else module.process_group
