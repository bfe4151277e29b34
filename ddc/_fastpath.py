"""The fast paths of :mod:`ddc.functional`: the same maths, with CPU memory traffic and kernels in mind.

On the CPU a training step's mask costs more than its matrix products if it
is built the obvious way: every elementwise op allocates a weight-sized
temporary and streams it through memory, and ``torch.rand`` runs one
Mersenne-Twister call plus a scalar conversion per edge. This module

* takes the statistics of ``|S|`` in one streaming pass
  (:func:`streamed_stats`: shifted data, so a constant signal gives exactly
  z = 0, and a parallel merge of the blocks, :func:`merge_moments`);
* builds drop probabilities and the mask block by block (:data:`CHUNK`
  edges, a few MiB) in :func:`drop_and_keep`, calling
  :func:`ddc.functional.normalized_signal` and :func:`ddc.functional.drop_curve`
  in place on cache-resident buffers, and writing only the bool mask (and the
  drop probabilities when asked for) at full size;
* draws 16 random bits per edge from 64-bit generator words (four edges per
  word; see :data:`MASK_BITS`);
* offers one ``torch.compile`` kernel for the score, curve, uniforms and
  comparison (``drop_and_keep(..., compile=True)``);
* lets a large CPU layer's masked weight reuse its memory from step to step
  (:class:`WeightBuffer`, the only memory policy in the package).

The blocked loops (marked ``@eager_only``) run eagerly under
``torch.compile(model)``: traced, their host reads and generator calls would
break the graph at every block, and a compiled dtype view of the random words
fails in AOT autograd; eager, they give exactly the masks of an uncompiled model.

Other devices take the same code in one block and keep ``torch.rand``. Every
function here is tested against :func:`ddc.functional.drop_probability` and
:func:`ddc.functional.keep_mask` (``tests/test_fastpath.py``,
``tests/test_compile.py``): the same masks for the same generator state.
"""

from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import functional as dfn
from ._transforms import eager_only, functorch_active

#: Random bits per edge of a CPU mask. The uniform is ``u = (k + 0.5) / 2**16``
#: with ``k`` uniform on ``0 .. 2**16 - 1`` and the rule stays ``keep = u > p``,
#: so an edge is dropped with probability ``round(p * 2**16) / 2**16``: within
#: ``2**-17`` of ``p``; ``p = 0`` never drops and ``p = 1`` always drops.
#: (``torch.rand`` has 24 bits, one generator call per edge; this uses a
#: quarter of a 64-bit word per edge.)
MASK_BITS = 16

#: Edges per block of the CPU fast path (a multiple of 4: four edges per
#: 64-bit word, so blocking never changes which bits an edge gets).
CHUNK = 1 << 20

# (k - 32768) * 2**-16 + (0.5 + 2**-17) = (k + 0.5) / 2**16
_HALF_BIN = torch.tensor(0.5 + 2.0**-17, dtype=torch.float64)


# ----------------------------------------------------------------------------- random bits


def uniform_dtype(drop_prob: Tensor) -> torch.dtype:
    """The dtype of CPU uniforms compared with ``drop_prob``: ``(k + 0.5) / 2**16`` is exact in float32/64.

    Raises:
        Nothing.
    """
    return drop_prob.dtype if drop_prob.dtype in (torch.float32, torch.float64) else torch.float32


@eager_only
def _random_halfwords(count: int, generator: Optional[torch.Generator]) -> Tensor:
    """``count`` uniform 16-bit integers ``k - 32768`` (int16), four per 64-bit generator word."""
    words = torch.empty((count + 3) // 4, dtype=torch.int64)
    words.random_(-(2**63), None, generator=generator)  # all 64 bits of each word
    return words.view(torch.int16)[:count]


def uniform_block(count: int, generator: Optional[torch.Generator], out: Tensor) -> Tensor:
    """``count`` CPU uniforms ``(k + 0.5) / 2**16`` into ``out[:count]`` (see :data:`MASK_BITS`).

    Raises:
        Nothing of its own; an ``out`` shorter than ``count`` raises torch's ``RuntimeError``.
    """
    uniform = out[:count]
    uniform.copy_(_random_halfwords(count, generator))  # k - 32768, exact
    return torch.add(_HALF_BIN.to(uniform.dtype), uniform, alpha=2.0**-16, out=uniform)  # exact


@eager_only
def keep_mask_cpu(drop_prob: Tensor, size: Tuple[int, ...], generator: Optional[torch.Generator]) -> Tensor:
    """:func:`ddc.functional.keep_mask` on the CPU: ``keep = u > drop_prob`` for a mask of ``size``.

    Block by block when ``drop_prob`` has the mask's shape or is one value
    (no full-size uniform tensor); a smaller ``drop_prob`` broadcast against
    ``size`` gets every uniform first. Either way edge ``i`` of the mask gets
    the ``i``-th 16-bit draw.

    Raises:
        Nothing of its own; a ``drop_prob`` that does not broadcast to ``size`` raises torch's ``RuntimeError``.
    """
    udtype = uniform_dtype(drop_prob)
    if tuple(drop_prob.shape) != size and drop_prob.numel() != 1:
        uniform = torch.empty(size, dtype=udtype)
        flat_uniform = uniform.view(-1)
        for start in range(0, flat_uniform.numel(), CHUNK):
            stop = min(start + CHUNK, flat_uniform.numel())
            uniform_block(stop - start, generator, flat_uniform[start:stop])
        return uniform > drop_prob
    # (drop_prob has the mask's shape or one value: the broadcast shape is size, with any extra leading ones;
    # torch.broadcast_shapes would import torch._refs and sympy on first use)
    extra = max(drop_prob.dim() - len(size), 0)
    keep = torch.empty((1,) * extra + tuple(size), dtype=torch.bool)
    flat_keep = keep.view(-1)
    flat_prob = drop_prob.reshape(-1) if drop_prob.numel() > 1 else drop_prob.reshape(())
    buffer = torch.empty(min(CHUNK, max(flat_keep.numel(), 1)), dtype=udtype)
    for start in range(0, flat_keep.numel(), CHUNK):
        stop = min(start + CHUNK, flat_keep.numel())
        uniform = uniform_block(stop - start, generator, buffer)
        prob = flat_prob[start:stop] if flat_prob.dim() else flat_prob
        torch.gt(uniform, prob, out=flat_keep[start:stop])
    return keep


# ----------------------------------------------------------------------------- masked weight


def masked_weight_applies(weight: Tensor, keep_mask: Tensor, scale: Tensor) -> bool:
    """Whether :func:`masked_weight_cpu` computes ``(weight * keep_mask) * scale`` here.

    Raises:
        Nothing.
    """
    return (
        weight.device.type == "cpu"
        and keep_mask.dtype == torch.bool
        and keep_mask.shape == weight.shape
        and scale.numel() == 1
        and weight.dtype in (torch.float32, torch.float64)
        and torch.result_type(weight, scale) == weight.dtype
        and not (torch.is_grad_enabled() and (weight.requires_grad or scale.requires_grad))
        and not functorch_active()
    )


@eager_only
def masked_weight_cpu(weight: Tensor, keep_mask: Tensor, scale: Tensor, *, out: Optional[Tensor] = None) -> Tensor:
    """``(weight * keep_mask) * scale`` block by block (:data:`CHUNK` entries), one new tensor.

    The mask block is read as ``uint8`` (a fast conversion; bool-consuming
    kernels such as ``where`` are several times slower on the CPU), multiplied
    by ``scale`` and then into the weight block: the formula's values. Only
    where :func:`masked_weight_applies`; ``out`` (a contiguous tensor of the
    weight's shape and dtype) receives the result.

    Raises:
        Nothing of its own (callers check :func:`masked_weight_applies` first).
    """
    flat_weight = weight.reshape(-1)
    keep_bytes = keep_mask.reshape(-1).view(torch.uint8)
    factor_value = scale.reshape(())
    if out is None or out.shape != weight.shape or out.dtype != weight.dtype or not out.is_contiguous():
        out = torch.empty(weight.shape, dtype=weight.dtype)
    flat_out = out.view(-1)
    buffer = torch.empty(min(CHUNK, max(flat_weight.numel(), 1)), dtype=weight.dtype)
    for start in range(0, flat_weight.numel(), CHUNK):
        stop = min(start + CHUNK, flat_weight.numel())
        factor = buffer[: stop - start].copy_(keep_bytes[start:stop]).mul_(factor_value)  # keep * scale: 0 or scale
        torch.mul(flat_weight[start:stop], factor, out=flat_out[start:stop])
    return out


class WeightBuffer:
    """The one memory policy of the fast path: the masked weight of a large CPU layer reuses its memory.

    A CPU tensor of a 4096 x 4096 layer's size comes straight from the OS,
    so each step's fresh ``W_eff`` pays a weight's worth of page faults (on
    the machine of ``benchmarks/results`` about a fifth of a DDC step of that
    layer). :meth:`take` hands out the memory of the last ``W_eff`` again, as
    a new tensor object, but only when nothing uses it any more: no graph
    that saved it for backward, no ``.grad``, no reference kept by the caller
    (all checked through the storage's use count, which every such holder
    raises). Otherwise it gives a fresh tensor, so a result never aliases a
    live one. Used for layers of at least :attr:`MIN_NUMEL` (:data:`CHUNK`) edges
    (:meth:`wanted`), never under torch.func transforms or while ``torch.compile``
    traces, and not at all when torch lacks the storage counter.
    """

    _use_count = getattr(torch._C, "_storage_Use_Count", None)
    MIN_NUMEL = CHUNK

    def __init__(self):
        self.buffer: Optional[Tensor] = None
        self.count = 0

    @classmethod
    def wanted(cls, param: Tensor) -> bool:
        """Whether ``param``'s masked weight should get a reused buffer (large, CPU, counter present, not traced or transformed).

        Raises:
            Nothing.
        """
        return (
            cls._use_count is not None
            and param.device.type == "cpu"
            and param.numel() >= cls.MIN_NUMEL
            and not torch.compiler.is_compiling()  # a traced graph allocates its own outputs
            and not functorch_active()  # transforms wrap their own tensors
        )

    def _uses(self, tensor: Tensor) -> int:
        return self._use_count(tensor.untyped_storage()._cdata)

    def take(self, like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``like``'s shape and dtype, on the old buffer's memory when it is free.

        Raises:
            Nothing.
        """
        buffer = self.buffer
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or self._uses(buffer) != self.count:
            buffer = self.buffer = torch.empty(like.shape, dtype=like.dtype)
            self.count = self._uses(buffer)
        return torch.empty(0, dtype=buffer.dtype).set_(buffer.untyped_storage(), 0, buffer.shape, buffer.stride())


# ----------------------------------------------------------------------------- statistics


def _block_rows(rows: int, cols: int, device: torch.device) -> int:
    """Rows per block: about CHUNK edges, and a multiple of 4 edges unless it is the last."""
    if device.type != "cpu" or rows * cols <= CHUNK:
        return max(rows, 1)
    step = 4 // math.gcd(cols, 4)
    return max(step, (CHUNK // max(cols, 1)) // step * step)


def blocks(signal: Tensor, scope: str) -> List[Tuple[int, Tensor]]:
    """``(start, view)`` of ``signal`` block by block: flat ranges (layer scope) or row ranges (row scope).

    Raises:
        Nothing.
    """
    if scope == "row" and signal.dim() >= 2:
        matrix = signal.reshape(signal.shape[0], -1)
        step = _block_rows(matrix.shape[0], matrix.shape[1], signal.device)
        return [(start, matrix[start : start + step]) for start in range(0, matrix.shape[0], step)]
    flat = signal.reshape(-1)
    step = flat.numel() if signal.device.type != "cpu" else CHUNK
    return [(start, flat[start : start + step]) for start in range(0, max(flat.numel(), 1), max(step, 1))]


def _abs_into(block: Tensor, out: Tensor) -> Tensor:
    """``|block|`` written into ``out`` (which may be of a wider dtype)."""
    if block.dtype == out.dtype:
        return torch.abs(block, out=out)
    return out.copy_(block).abs_()


@eager_only
def streamed_stats(signal: Tensor, scope: str, want_sd: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`ddc.functional.signal_stats` of ``|signal|`` without a full-size temporary.

    Shifted data (the first edge of each scope is subtracted first, so a
    constant signal gives exactly its own mean and std 0), a two-pass
    mean/centred sum of squares per cache-sized block, and the parallel
    (Chan et al.) merge of the blocks in float64.

    Args:
        signal: ``S`` (not its magnitude), any shape.
        scope: ``"layer"`` or ``"row"``.
        want_sd: False skips the standard deviation (None is returned).
    Returns:
        ``(mean, std)`` in :func:`ddc.functional.work_dtype`: 0-dim for the layer
        scope, ``(rows, 1, ...)`` with the signal's number of dimensions for the
        row scope. A scope of one edge has std 0.

    Raises:
        Nothing of its own; any ``scope`` but ``"row"`` is taken as the layer scope.
    """
    if scope == "row" and signal.dim() >= 2:
        return _row_stats(signal, want_sd)
    dtype = dfn.work_dtype(signal.dtype)
    flat = signal.reshape(-1)
    count = flat.numel()
    shift = dfn._as_work(flat[0]).abs() if count else torch.zeros((), dtype=dtype, device=signal.device)
    parts = blocks(signal, "layer")
    buffer = torch.empty(parts[0][1].numel(), dtype=dtype, device=signal.device)
    means, sums_of_squares, sizes = [], [], []
    for _, block in parts:
        centred = _abs_into(block, buffer[: block.numel()]).sub_(shift)
        block_mean = centred.mean()
        means.append(block_mean)
        sizes.append(block.numel())
        if want_sd:
            centred.sub_(block_mean)
            sums_of_squares.append(_sum_of_squares(centred))
    if len(means) == 1:
        std = torch.sqrt(sums_of_squares[0] / max(count - 1, 1)).to(dtype) if want_sd else None
        return shift + means[0], std
    wide = torch.float64 if signal.device.type != "mps" else torch.float32
    mean_offset, total_squares = merge_moments(means, sums_of_squares if want_sd else None, sizes, dtype=wide)
    std = torch.sqrt(total_squares / max(count - 1, 1)).to(dtype) if want_sd else None
    return (shift.to(wide) + mean_offset).to(dtype), std


def _row_stats(signal: Tensor, want_sd: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`streamed_stats` per output unit (row scope)."""
    dtype = dfn.work_dtype(signal.dtype)
    matrix = signal.reshape(signal.shape[0], -1)
    cols = matrix.shape[1]
    shift = dfn._as_work(matrix[:, :1]).abs()
    parts = blocks(signal, "row")
    buffer = torch.empty(parts[0][1].numel(), dtype=dtype, device=signal.device)
    means, sums_of_squares = [], []
    for start, block in parts:
        centred = _abs_into(block, buffer[: block.numel()].view(block.shape))
        centred.sub_(shift[start : start + block.shape[0]])
        block_mean = centred.mean(dim=1, keepdim=True)
        means.append(block_mean)
        if want_sd:
            centred.sub_(block_mean)
            sums_of_squares.append(_sum_of_squares(centred, dim=1))
    mean = shift + torch.cat(means)
    std = torch.sqrt(torch.cat(sums_of_squares) / max(cols - 1, 1)).to(dtype) if want_sd else None
    shape = (signal.shape[0],) + (1,) * (signal.dim() - 1)
    return mean.reshape(shape), (std.reshape(shape) if std is not None else None)


def _sum_of_squares(centred: Tensor, dim: Optional[int] = None) -> Tensor:
    """``sum(centred**2)`` (over ``dim``, kept for broadcasting; all of it when None).

    In ``centred``'s dtype, except where a float32 sum overflows while the
    values are finite (``|S|`` from about 1e19): on the CPU such a sum is
    taken again in float64 (the readable :func:`ddc.functional.signal_stats`
    accumulates in float64 too), so the standard deviation stays finite.
    """
    if dim is None:
        total = torch.dot(centred, centred) if centred.dtype in (torch.float32, torch.float64) else (centred * centred).sum()
    else:
        total = torch.linalg.vector_norm(centred, dim=dim, keepdim=True).square_()
    if centred.device.type == "cpu" and centred.dtype != torch.float64 and not bool(torch.isfinite(total).all()):
        if bool(torch.isfinite(centred).all()):
            wide = centred.to(torch.float64)
            total = wide.square().sum() if dim is None else wide.square().sum(dim=dim, keepdim=True)
    return total


def merge_moments(
    means: Sequence[Tensor], sums_of_squares: Optional[Sequence[Tensor]], counts: Sequence, *, dtype: torch.dtype = torch.float64
) -> Tuple[Tensor, Optional[Tensor]]:
    """Mean and centred sum of squares (M2) of a union of groups, from each group's.

    The parallel formula of Chan et al. (1979): ``mean = sum(n_i mean_i) / n``
    and ``M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2)``, computed in ``dtype``.

    Args:
        means, sums_of_squares, counts: one entry per group (0-dim tensors,
            numbers for ``counts``); ``sums_of_squares=None`` returns only the mean.
    Returns:
        ``(mean, M2)`` as 0-dim tensors (M2 None without ``sums_of_squares``).

    Raises:
        RuntimeError: no groups (``torch.stack`` of an empty list).
    """
    means_t = torch.stack(list(means)).to(dtype)
    counts_t = torch.tensor(list(counts), dtype=dtype, device=means_t.device)
    mean = (means_t * counts_t).sum() / counts_t.sum()
    if sums_of_squares is None:
        return mean, None
    total = torch.stack(list(sums_of_squares)).to(dtype).sum() + (counts_t * (means_t - mean).square()).sum()
    return mean, total


# ----------------------------------------------------------------------------- probabilities and mask


def drop_and_keep(
    signal: Tensor,
    *,
    p_base: float,
    p_signal: float,
    tau: float = 0.5,
    prefer: str = "small",
    normalize: str = "zscore",
    scope: str = "layer",
    eps: float = dfn.EPS,
    stats: Optional[Tuple[Tensor, Optional[Tensor]]] = None,
    finite: Union[bool, Tensor, None] = None,
    generator: Optional[torch.Generator] = None,
    want_prob: bool = True,
    draw: bool = True,
    stats_out: Optional[list] = None,
    compile: bool = False,
) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor]:
    """``drop_probability`` and ``keep_mask`` of :mod:`ddc.functional` in one blocked pass.

    The same masks as ``p = drop_probability(signal, ...)`` followed by
    ``keep_mask(p, generator=generator)`` for the same generator state, and
    the same probabilities up to the statistics' rounding (here
    :func:`streamed_stats`). No full-size temporaries: ``drop_prob`` is only
    materialised when ``want_prob``; ``keep`` only when ``draw``.

    Args:
        signal: any shape. Options as :func:`ddc.functional.drop_probability`
            (``normalize="rank"`` is not supported here: it needs the whole tensor).
        stats, finite: given, used instead of being computed.
        stats_out: a list that receives the ``(mean, std)`` the scores used
            (either may be None), with which ``drop_probability(..., stats=,
            finite=)`` gives the same probabilities for any part of the signal later.
        compile: use one ``torch.compile`` kernel over the whole tensor for
            the score, curve, uniforms and comparison (the statistics and
            random bits stay eager, so the generator advances as on the
            eager path); its probabilities agree to float rounding.
    Returns:
        ``(drop_prob or None, keep or None, finite)``, ``finite`` a 0-dim
        bool tensor (False: every edge got ``p_base``).
    Raises:
        ValueError: ``normalize="rank"``, ``compile`` not a bool, or a bad option (named).
    """
    if normalize == "rank":
        raise ValueError("drop_and_keep: normalize='rank' needs the full tensor; use drop_probability")
    dfn.check_choice("compile", compile, (False, True))
    if normalize in ("zscore", "mean") and stats is None:
        stats = streamed_stats(signal, scope, want_sd=normalize == "zscore")
        if finite is None:
            # The mean (accumulated per block, merged in float64) is finite exactly when every entry is.
            finite = torch.isfinite(stats[0]).all()
    if finite is None:
        finite = torch.isfinite(signal).all()
    elif not isinstance(finite, Tensor):
        finite = torch.tensor(bool(finite), device=signal.device)
    if stats_out is not None:
        stats_out.extend(stats if stats is not None else (None, None))
    formula = dict(p_base=p_base, p_signal=p_signal, tau=tau, prefer=prefer, normalize=normalize, scope=scope, eps=eps)
    if compile and draw:  # one fused kernel over the whole tensor: none of the blocked path's buffers
        return _drop_and_keep_compiled(signal, formula, stats, finite, generator, want_prob)
    return _drop_and_keep_blocked(signal, formula, stats, finite, generator, want_prob, draw)


@eager_only
def _drop_and_keep_blocked(signal, formula, stats, finite, generator, want_prob, draw):
    """:func:`drop_and_keep`'s eager path, block by block (see the module docstring)."""
    row = formula["scope"] == "row" and signal.dim() >= 2
    dtype, device = dfn.work_dtype(signal.dtype), signal.device
    cpu = device.type == "cpu"
    prob = torch.empty(signal.shape, dtype=dtype, device=device) if want_prob else None
    keep = torch.empty(signal.shape, dtype=torch.bool, device=device) if draw else None
    parts = blocks(signal, formula["scope"])
    size = parts[0][1].numel()
    buffer = None if want_prob else torch.empty(size, dtype=dtype, device=device)
    uniforms = torch.empty(size, dtype=dtype, device=device) if (draw and cpu) else None
    prob_view = None if prob is None else (prob.reshape(signal.shape[0], -1) if row else prob.view(-1))
    keep_view = None if keep is None else (keep.view(signal.shape[0], -1) if row else keep.view(-1))
    # On the CPU, looking at the finiteness flag is free (no device queue to wait for).
    finite_on_host = bool(finite) if cpu else None
    for start, block in parts:
        stop = start + block.shape[0]
        out = prob_view[start:stop] if prob_view is not None else buffer[: block.numel()].view(block.shape)
        if finite_on_host is False:
            drop_prob = out.fill_(formula["p_base"])
        else:
            drop_prob = _block_drop_prob(block, out, formula, _block_stats(stats, row, start, stop))
            if finite_on_host is None:
                dfn._fall_back(drop_prob, finite, formula["p_base"])
        if draw:
            keep_block = keep_view[start:stop]
            if cpu:
                uniform = uniform_block(block.numel(), generator, uniforms).view(block.shape)
                # float compare, then float -> bool: both fast kernels (a bool-out compare is not).
                keep_block.copy_(torch.gt(uniform, drop_prob, out=uniform))
            else:
                uniform = torch.rand(block.shape, generator=generator, device=device, dtype=dtype)
                torch.gt(uniform, drop_prob, out=keep_block)
    return prob, keep, finite


def _block_stats(stats, row: bool, start: int, stop: int):
    """The part of ``(mean, std)`` that applies to rows ``start:stop`` (all of it for the layer scope)."""
    if stats is None or not row:
        return stats
    return tuple(None if part is None or part.dim() == 0 else part.reshape(-1, 1)[start:stop] for part in stats)


def _block_drop_prob(block: Tensor, out: Tensor, formula: dict, stats) -> Tensor:
    """Drop probabilities of one block, in place in ``out``: ``|block|``, its score, the curve."""
    magnitude = _abs_into(block, out)
    score = dfn.normalized_signal(
        magnitude, normalize=formula["normalize"], scope="layer", eps=formula["eps"], stats=stats, inplace=True
    )
    return dfn.drop_curve(
        score, p_base=formula["p_base"], p_signal=formula["p_signal"], tau=formula["tau"], prefer=formula["prefer"], inplace=True
    )


# ----------------------------------------------------------------------------- torch.compile path
#
# The blocked eager path runs about ten elementwise kernels per block. With
# compile=True the score, curve, uniform and comparison are one fused kernel
# generated by torch.compile (Inductor) over the whole tensor; the statistics
# and the random bits stay eager, so the generator is advanced exactly as on
# the eager path and the masks are the same up to float rounding inside the
# fused kernel (an edge flips only where p and its 16-bit uniform agree to the
# last bit). Compilation costs seconds to a minute per kernel variant and
# process, once; it pays off on large layers of accelerators.


@functools.lru_cache(maxsize=None)
def _fused_kernel(normalize: str, prefer: str, row: bool, bits: bool, want_prob: bool):
    """The compiled kernel for one variant (the numbers are arguments: no recompiles per value)."""

    def kernel(signal, draws, mean, std, finite, p_base, p_signal, tau, eps):
        magnitude = signal.abs().to(mean.dtype)
        stats = (mean, std) if normalize in ("zscore", "mean") else None
        score = dfn.normalized_signal(magnitude, normalize=normalize, scope="layer", eps=eps, stats=stats)
        drop_prob = dfn.drop_curve(score, p_base=p_base, p_signal=p_signal, tau=tau, prefer=prefer)
        drop_prob = torch.where(finite, drop_prob, torch.full_like(drop_prob, p_base))
        uniform = draws.to(drop_prob.dtype) * (2.0**-16) + (0.5 + 2.0**-17) if bits else draws
        keep = uniform > drop_prob
        return (drop_prob, keep) if want_prob else keep

    return torch.compile(kernel, dynamic=True, fullgraph=True)


def _drop_and_keep_compiled(signal, formula, stats, finite, generator, want_prob):
    row = formula["scope"] == "row" and signal.dim() >= 2
    dtype, device = dfn.work_dtype(signal.dtype), signal.device
    flat = signal.reshape(signal.shape[0], -1) if row else signal.reshape(-1)
    bits = device.type == "cpu"
    if bits:
        draws = _random_halfwords(flat.numel(), generator).view(flat.shape)  # the eager path's bits, edge for edge
    else:
        draws = torch.rand(flat.shape, generator=generator, device=device, dtype=dtype)

    def as_scope(part):
        if part is None:
            return torch.zeros((), dtype=dtype, device=device)
        return part.reshape(-1, 1) if row and part.dim() else part

    mean, std = stats if stats is not None else (None, None)
    kernel = _fused_kernel(formula["normalize"], formula["prefer"], row, bits, want_prob)
    numbers = [float(formula[name]) for name in ("p_base", "p_signal", "tau", "eps")]
    result = kernel(flat, draws, as_scope(mean), as_scope(std), finite, *numbers)
    prob, keep = result if want_prob else (None, result)
    return (None if prob is None else prob.view(signal.shape)), keep.view(signal.shape), finite
