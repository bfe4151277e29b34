"""Pure tensor maths of Dynamic DropConnect: no state, no modules.

The three steps of one DDC edge-drop, following the method specification
(``docs/method.md``):

1. :func:`drop_probability` turns a signal tensor (the last gradient of a
   weight, or the weight itself) into a per-edge drop probability.
2. :func:`keep_mask` draws the Bernoulli keep mask, ``keep = u > drop_prob``.
3. :func:`recalibrate` rescales the kept weights so that inference can use
   the unmasked weight.

The functions reproduce the authors' reference implementation (see
``tests/reference/ddc_reference_vectors.json``) to float32 precision.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._transforms import functorch_active

PREFER = ("small", "big")
NORMALIZE = ("zscore", "none", "mean", "rank")
SCOPE = ("layer", "row")
RECALIBRATION = ("realized", "expected", "per_edge", "none")

EPS = 1e-9


def check_choice(name: str, value, allowed) -> None:
    """Raise a ``ValueError`` naming ``name`` and the allowed values."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {choices}")


def check_probability(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")


def check_drop_config(p_base: float, p_signal: float, tau: float) -> None:
    """Validate DDC's probabilities; shared by the functional API and the modules."""
    check_probability("p_base", p_base)
    check_probability("p_signal", p_signal)
    if p_base + p_signal > 1.0 + 1e-12:
        raise ValueError(
            f"p_base + p_signal = {p_base} + {p_signal} = {p_base + p_signal:g} exceeds 1; "
            "an edge's drop probability p_base + p_signal * q must stay in [0, 1]"
        )
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not 0.0 < tau < 1.0:
        raise ValueError(f"tau={tau!r} must lie in the open interval (0, 1)")


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and drop probabilities are computed in: at least float32.

    float64 signals stay float64; float16 and bfloat16 signals are computed in
    float32 (their sums overflow or lose the differences the z-score needs).
    """
    return dtype if dtype == torch.float64 else torch.float32


def _as_work(x: Tensor) -> Tensor:
    return x if x.dtype == work_dtype(x.dtype) else x.to(work_dtype(x.dtype))


def _reduce_dims(x: Tensor, scope: str) -> Optional[Tuple[int, ...]]:
    """Dimensions the statistics run over: all (layer) or all but the first (row)."""
    if scope == "layer" or x.dim() < 2:
        return None
    return tuple(range(1, x.dim()))


def signal_stats(magnitude: Tensor, scope: str = "layer") -> Tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of ``|signal|`` over the scope.

    ``magnitude`` is ``|S|``. For ``scope="row"`` the statistics are taken per
    output unit (first dimension) and keep their dimensions for broadcasting.
    One fused pass (``torch.std_mean``) over the tensor, in at least float32
    (:func:`work_dtype`). A scope of one edge has standard deviation 0 (not
    the NaN of ``N - 1 = 0``): one value does not vary.
    """
    magnitude = _as_work(magnitude)
    dims = _reduce_dims(magnitude, scope)
    count = magnitude.numel() if dims is None else math.prod(magnitude.shape[d] for d in dims)
    correction = 1 if count > 1 else 0
    if dims is None:
        sd, mu = torch.std_mean(magnitude, correction=correction)
    else:
        sd, mu = torch.std_mean(magnitude, dim=dims, keepdim=True, correction=correction)
    return mu, sd


def normalized_signal(
    magnitude: Tensor,
    *,
    normalize: str = "zscore",
    scope: str = "layer",
    eps: float = EPS,
    stats: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """Map ``|S|`` to the z-like score fed to the sigmoid.

    - ``zscore``: ``(a - mean) / (std + eps)`` (the paper);
    - ``none``: ``a`` itself (DDC then collapses to DropConnect(p_base) for
      tiny gradients, since sigmoid(-a) stays near 0.5);
    - ``mean``: ``a / mean(a) - 1``, computed as ``(a - mean) / (mean + eps)``
      so that equal values give exactly 0 (eps only guards an all-zero scope);
    - ``rank``: the within-scope percentile ``(rank + 0.5) / n`` mapped through
      the standard normal quantile function, so it lives on a z-like scale;
      tied values share their average rank.

    Equal values (and a scope of one edge) give ``z = 0`` under every
    normalisation but ``none``. Computed in at least float32.
    ``stats`` overrides the ``(mean, std)`` pair, which is how a global scope
    across several layers is implemented.
    """
    check_choice("normalize", normalize, NORMALIZE)
    check_choice("scope", scope, SCOPE)
    magnitude = _as_work(magnitude)
    if normalize == "none":
        return magnitude
    if normalize == "rank":
        return _rank_score(magnitude, scope)
    if stats is None:
        mu, sd = signal_stats(magnitude, scope)
    else:
        mu, sd = stats
    if normalize == "mean":
        return (magnitude - mu) / (mu + eps)
    return (magnitude - mu) / (sd + eps)


def _rank_score(magnitude: Tensor, scope: str) -> Tensor:
    """``ndtri((rank + 0.5) / n)`` per scope, with average ranks for ties."""
    magnitude = _as_work(magnitude)
    if scope == "row" and magnitude.dim() >= 2:
        flat = magnitude.reshape(magnitude.shape[0], -1)
    else:
        flat = magnitude.reshape(1, -1)
    percentile = (average_ranks(flat).to(magnitude.dtype) + 0.5) / flat.shape[1]
    return torch.special.ndtri(percentile).reshape(magnitude.shape)


def average_ranks(values: Tensor) -> Tensor:
    """0-based ranks along the last dimension of a ``(rows, n)`` tensor, ties sharing the mean
    of their positions (scipy's ``rankdata(method="average") - 1``); float64."""
    rows, n = values.shape
    ordered, order = values.sort(dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    # a group id per sorted position, unique across rows
    group = starts.cumsum(1) - 1 + torch.arange(rows, device=values.device).unsqueeze(1) * n
    positions = torch.arange(n, device=values.device, dtype=torch.float64).expand(rows, n)
    sums = torch.zeros(rows * n, dtype=torch.float64, device=values.device).index_add_(0, group.reshape(-1), positions.reshape(-1))
    counts = torch.bincount(group.reshape(-1), minlength=rows * n).to(torch.float64)
    mean_position = (sums / counts.clamp_min(1)).gather(0, group.reshape(-1)).reshape(rows, n)
    return torch.empty_like(mean_position).scatter_(1, order, mean_position)


def drop_probability(
    signal: Tensor,
    *,
    p_base: float,
    p_signal: float,
    tau: float = 0.5,
    prefer: str = "small",
    normalize: str = "zscore",
    scope: str = "layer",
    eps: float = EPS,
    stats: Optional[Tuple[Tensor, Tensor]] = None,
    finite: Optional[Tensor] = None,
) -> Tensor:
    """Per-edge drop probability ``p = p_base + p_signal * q``.

    ``q = c * [c > tau]`` with ``c = sigmoid(-z)`` (``prefer="small"``: edges
    with small signal are dropped more often, the paper's DDC) or
    ``c = sigmoid(z)`` (``prefer="big"``), where ``z`` is the normalised
    ``|signal|`` (see :func:`normalized_signal`). Method spec section 1.

    Signals with zero variance (and scopes of one edge) give ``z = 0``,
    ``c = 0.5`` and hence ``p_base`` everywhere (``0.5 > tau`` is false for the
    default ``tau``). **Non-finite signals, one rule for every option:** if any
    entry of ``signal`` is inf or NaN, every edge gets ``p_base`` (whatever
    the normalisation and scope). ``finite`` (a bool, or a 0-dim bool tensor)
    states whether the signal is finite when the caller knows it (e.g. with
    ``stats`` pooled over layers); otherwise it is computed.

    Args:
        signal: gradient or weight, any shape (``out x in`` or ``out x in x k...``).
        p_base, p_signal: probabilities with ``p_base + p_signal <= 1``.
        tau: threshold in (0, 1) on the sigmoid output.
    Returns:
        A tensor of the signal's shape with values in ``[p_base, p_base + p_signal]``,
        in the signal's dtype, or float32 for 16-bit signals (:func:`work_dtype`).
    Raises:
        ValueError: a probability, ``tau`` or choice out of range (named).
    """
    check_drop_config(p_base, p_signal, tau)
    check_choice("prefer", prefer, PREFER)
    check_choice("normalize", normalize, NORMALIZE)
    check_choice("scope", scope, SCOPE)
    if normalize == "rank":
        z = _rank_score(signal.abs(), scope)
        c = torch.sigmoid(z if prefer == "big" else -z)
        q = torch.where(c > tau, c, torch.zeros((), dtype=c.dtype, device=c.device))
        prob = q.mul_(p_signal).add_(p_base)
        if finite is None:
            finite = torch.isfinite(signal).all()
        return _fall_back(prob, finite, p_base)
    prob, _, _ = drop_and_keep(
        signal, p_base=p_base, p_signal=p_signal, tau=tau, prefer=prefer, normalize=normalize,
        scope=scope, eps=eps, stats=stats, finite=finite, want_prob=True, draw=False,
    )
    return prob


def _fall_back(prob: Tensor, finite, p_base: float) -> Tensor:
    """``prob``, or ``p_base`` on every edge when the signal was not finite (no host sync off the CPU)."""
    if isinstance(finite, bool) or prob.device.type == "cpu":
        return prob if bool(finite) else prob.fill_(p_base)
    return torch.where(finite, prob, torch.full((), p_base, dtype=prob.dtype, device=prob.device))


def keep_mask(
    drop_prob: Tensor,
    *,
    uniform: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    shape: Optional[Tuple[int, ...]] = None,
) -> Tensor:
    """Bernoulli keep mask ``keep = u > drop_prob`` with ``u ~ U[0, 1)``.

    ``uniform`` supplies the draws (the reference vectors do); otherwise they
    come from ``generator`` (or the global RNG). ``shape`` draws a mask larger
    than ``drop_prob`` that broadcasts against it, e.g. one mask per example
    ``(batch, out, in)`` for a weight-shaped ``drop_prob``.
    """
    if uniform is not None:
        return uniform > drop_prob
    size = tuple(shape) if shape is not None else tuple(drop_prob.shape)
    if drop_prob.device.type != "cpu":
        uniform = torch.rand(size, generator=generator, device=drop_prob.device, dtype=_float_dtype(drop_prob))
        return uniform > drop_prob
    # CPU: 16-bit uniforms from raw generator bits (see MASK_BITS), block by block.
    udtype = _uniform_dtype(drop_prob)
    if tuple(drop_prob.shape) == size or drop_prob.numel() == 1:
        keep = torch.empty(torch.broadcast_shapes(size, drop_prob.shape), dtype=torch.bool)
        flat_keep = keep.view(-1)
        flat_p = drop_prob.reshape(-1) if drop_prob.numel() > 1 else drop_prob.reshape(())
        ubuf = torch.empty(min(CHUNK, max(flat_keep.numel(), 1)), dtype=udtype)
        for start in range(0, flat_keep.numel(), CHUNK):
            stop = min(start + CHUNK, flat_keep.numel())
            u = _uniform_block(stop - start, generator, ubuf)
            p = flat_p[start:stop] if flat_p.dim() else flat_p
            torch.gt(u, p, out=flat_keep[start:stop])
        return keep
    # A smaller drop_prob broadcast against ``shape``: draw every uniform, then compare.
    uniform = torch.empty(size, dtype=udtype)
    flat_u = uniform.view(-1)
    for start in range(0, flat_u.numel(), CHUNK):
        stop = min(start + CHUNK, flat_u.numel())
        _uniform_block(stop - start, generator, flat_u[start:stop])
    return uniform > drop_prob


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def keep_scale(
    keep: Tensor,
    *,
    mode: str = "realized",
    drop_prob: Optional[Tensor] = None,
    eps: float = EPS,
    batch_dims: int = 0,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """The factor that multiplies kept weights, so that ``W_eff = W * keep * scale``.

    - ``realized`` (reference code): ``1 / (mean(keep) + eps)``, the realised
      keep fraction of the layer (per example when ``batch_dims=1``);
    - ``expected``: ``1 / (1 - mean(drop_prob))``, classic inverted dropout;
    - ``per_edge``: ``1 / (1 - drop_prob)``, so ``E[W_eff] = W`` edge by edge;
    - ``none``: 1.

    Returns a tensor that broadcasts against ``keep``, of ``dtype`` (give the
    weight's, so that the masked weight keeps it; computed in at least float32),
    else of ``drop_prob``'s dtype or the default dtype.
    """
    scale = _keep_scale(keep, mode, drop_prob, eps, batch_dims)
    return scale if dtype is None or scale.dtype == dtype else scale.to(dtype)


def _keep_scale(keep, mode, drop_prob, eps, batch_dims):
    check_choice("recalibration", mode, RECALIBRATION)
    dtype = torch.get_default_dtype() if drop_prob is None else work_dtype(_float_dtype(drop_prob))
    if mode == "none":
        return torch.ones((), dtype=dtype, device=keep.device)
    if mode == "realized":
        dims = tuple(range(batch_dims, keep.dim()))
        if not dims:
            return 1.0 / (keep.to(dtype) + eps)
        # count_nonzero on the bool mask: the same value as keep.float().mean(),
        # without materialising a float copy of the mask.
        if len(dims) == keep.dim():
            count = torch.count_nonzero(keep).to(dtype)  # the full reduction has a fast kernel
        else:
            count = torch.count_nonzero(keep, dim=dims).to(dtype)
        n = math.prod(keep.shape[d] for d in dims)
        rate = (count / n).reshape(tuple(1 if d in dims else keep.shape[d] for d in range(keep.dim())))
        return 1.0 / (rate + eps)
    if drop_prob is None:
        raise ValueError(f"recalibration={mode!r} needs drop_prob")
    drop_prob = _as_work(drop_prob)
    if mode == "expected":
        return 1.0 / (1.0 - drop_prob.mean()).clamp_min(eps)
    return 1.0 / (1.0 - drop_prob).clamp_min(eps)


def recalibrate(
    weight: Tensor,
    keep_mask: Tensor,
    *,
    mode: str = "realized",
    drop_prob: Optional[Tensor] = None,
    eps: float = EPS,
) -> Tensor:
    """Masked, re-scaled weight ``W_eff = W * keep * scale`` (see :func:`keep_scale`).

    With ``mode="realized"`` this is the reference code's
    ``W * keep / (mean(keep) + eps)``. A ``keep_mask`` with one more leading
    dimension than ``weight`` is a per-example mask; its realised keep rate is
    then taken per example.
    """
    batch_dims = keep_mask.dim() - weight.dim()
    if batch_dims not in (0, 1):
        raise ValueError(
            f"keep_mask has shape {tuple(keep_mask.shape)}; expected the weight's shape "
            f"{tuple(weight.shape)} or one leading batch dimension"
        )
    scale = keep_scale(keep_mask, mode=mode, drop_prob=drop_prob, eps=eps, batch_dims=batch_dims, dtype=weight.dtype)
    return apply_keep(weight, keep_mask, scale)


def apply_keep(weight: Tensor, keep_mask: Tensor, scale: Tensor, *, out: Optional[Tensor] = None) -> Tensor:
    """``(weight * keep_mask) * scale``: the one place the masked weight is formed.

    On the CPU, for a bool mask of the weight's shape and a single scale, the
    product is formed block by block (``CHUNK`` entries): the mask block is
    read as ``uint8`` (a fast conversion; bool-consuming kernels such as
    ``where`` are several times slower on the CPU), multiplied by ``scale``
    and then into the weight block. Same values as the formula; one new
    tensor and no full-size temporaries. (Outside autograd only, as inside
    ``_MaskedWeight``; a differentiable call uses the formula.) ``out``, a
    contiguous tensor of the weight's shape and dtype, receives the result on
    that path (ignored elsewhere).
    """
    if (
        weight.device.type == "cpu"
        and keep_mask.dtype == torch.bool
        and keep_mask.shape == weight.shape
        and scale.numel() == 1
        and weight.dtype in (torch.float32, torch.float64)
        and torch.result_type(weight, scale) == weight.dtype
        and not (torch.is_grad_enabled() and (weight.requires_grad or scale.requires_grad))
        and not functorch_active()
    ):
        w = weight.reshape(-1)
        k8 = keep_mask.reshape(-1).view(torch.uint8)
        s = scale.reshape(())
        if out is None or out.shape != weight.shape or out.dtype != weight.dtype or not out.is_contiguous():
            out = torch.empty(weight.shape, dtype=weight.dtype)
        flat = out.view(-1)
        buf = torch.empty(min(CHUNK, max(w.numel(), 1)), dtype=weight.dtype)
        for start in range(0, w.numel(), CHUNK):
            stop = min(start + CHUNK, w.numel())
            factor = buf[: stop - start].copy_(k8[start:stop]).mul_(s)  # keep * scale: 0 or scale
            torch.mul(w[start:stop], factor, out=flat[start:stop])
        return out
    return (weight * keep_mask) * scale


# --------------------------------------------------------------------------- fast path
#
# On the CPU a training step's mask costs more than its matrix products if it
# is built the obvious way: every elementwise op allocates a weight-sized
# temporary (fresh pages from the OS for large layers) and streams it through
# memory, and ``torch.rand`` runs one Mersenne-Twister call plus a scalar
# conversion per edge. The functions below
#
# * take the statistics in one streaming pass over ``|S|`` (shifted data, so
#   a constant signal gives exactly z = 0, and a parallel merge of blocks);
# * build drop probabilities and the mask block by block (``CHUNK`` edges, a few
#   MiB), every op in place on cache-resident buffers, writing only the bool
#   mask (and the drop probabilities when asked for) at full size;
# * draw 16 random bits per edge from 64-bit generator words (four edges per
#   word); see ``MASK_BITS``.
#
# Other devices take the same code in one block and keep ``torch.rand``.

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


def _uniform_dtype(drop_prob: Tensor) -> torch.dtype:
    # (k + 0.5) / 2**16 needs 17 significant bits: exact in float32 and float64.
    return drop_prob.dtype if drop_prob.dtype in (torch.float32, torch.float64) else torch.float32


def _uniform_block(n: int, generator: Optional[torch.Generator], out: Tensor) -> Tensor:
    """``n`` CPU uniforms ``(k + 0.5) / 2**16`` into ``out[:n]`` (see ``MASK_BITS``)."""
    words = torch.empty((n + 3) // 4, dtype=torch.int64)
    words.random_(-(2**63), None, generator=generator)  # all 64 bits of each word
    u = out[:n]
    u.copy_(words.view(torch.int16)[:n])  # k - 32768, exact
    # (k - 32768) * 2**-16 + (0.5 + 2**-17) = (k + 0.5) / 2**16, exact in float32 / float64.
    return torch.add(_HALF_BIN.to(u.dtype), u, alpha=2.0**-16, out=u)


_HALF_BIN = torch.tensor(0.5 + 2.0**-17, dtype=torch.float64)


def _block_rows(rows: int, cols: int, device: torch.device) -> int:
    """Rows per block: about CHUNK edges, and a multiple of 4 edges unless it is the last."""
    if device.type != "cpu" or rows * cols <= CHUNK:
        return max(rows, 1)
    step = 4 // math.gcd(cols, 4)
    return max(step, (CHUNK // max(cols, 1)) // step * step)


def _blocks(x: Tensor, scope: str):
    """Views of ``x`` block by block: flat ranges (layer scope) or row ranges (row scope)."""
    if scope == "row" and x.dim() >= 2:
        matrix = x.reshape(x.shape[0], -1)
        step = _block_rows(matrix.shape[0], matrix.shape[1], x.device)
        return [(i, matrix[i : i + step]) for i in range(0, matrix.shape[0], step)]
    flat = x.reshape(-1)
    step = flat.numel() if x.device.type != "cpu" else CHUNK
    return [(i, flat[i : i + step]) for i in range(0, max(flat.numel(), 1), max(step, 1))]


def _streamed_stats(signal: Tensor, scope: str, want_sd: bool):
    """Mean and unbiased std of ``|signal|`` over the scope, without a full-size temporary.

    Shifted data (the first edge of each scope is subtracted first, so a
    constant signal gives exactly its own mean and std 0), a two-pass
    mean/centred sum of squares per cache-sized block, and the parallel
    (Chan et al.) merge of the blocks in float64. Layer scope: 0-dim results;
    row scope: ``(rows, 1, ...)`` with the signal's number of dimensions.
    In :func:`work_dtype` (float32 for 16-bit signals); a scope of one edge
    has std 0.
    """
    row = scope == "row" and signal.dim() >= 2
    dtype = work_dtype(signal.dtype)
    blocks = _blocks(signal, scope)
    if row:
        matrix = signal.reshape(signal.shape[0], -1)
        cols = matrix.shape[1]
        ref = _as_work(matrix[:, :1]).abs()
        buf = torch.empty(blocks[0][1].numel(), dtype=dtype, device=signal.device)
        means, m2s = [], []
        for start, blk in blocks:
            a = _abs_into(blk, buf[: blk.numel()].view(blk.shape))
            a.sub_(ref[start : start + blk.shape[0]])
            mu_b = a.mean(dim=1, keepdim=True)
            means.append(mu_b)
            if want_sd:
                a.sub_(mu_b)
                m2s.append(torch.linalg.vector_norm(a, dim=1, keepdim=True).square_())
        mu = ref + torch.cat(means)
        sd = torch.sqrt(torch.cat(m2s) / max(cols - 1, 1)) if want_sd else None
        shape = (signal.shape[0],) + (1,) * (signal.dim() - 1)
        return mu.reshape(shape), (sd.reshape(shape) if sd is not None else None)
    flat = signal.reshape(-1)
    n = flat.numel()
    ref = _as_work(flat[0]).abs() if n else torch.zeros((), dtype=dtype, device=signal.device)
    buf = torch.empty(blocks[0][1].numel(), dtype=dtype, device=signal.device)
    means, m2s, counts = [], [], []
    for _, blk in blocks:
        a = _abs_into(blk, buf[: blk.numel()])
        a.sub_(ref)
        mu_b = a.mean()
        means.append(mu_b)
        counts.append(blk.numel())
        if want_sd:
            a.sub_(mu_b)
            m2s.append(torch.dot(a, a) if a.is_floating_point() and a.dtype in (torch.float32, torch.float64) else (a * a).sum())
    if len(means) == 1:
        mu = ref + means[0]
        sd = torch.sqrt(m2s[0] / max(n - 1, 1)) if want_sd else None
        return mu, sd
    wide = torch.float64 if signal.device.type != "mps" else torch.float32
    shift, m2 = merge_moments(means, m2s if want_sd else None, counts, dtype=wide)
    mu = (ref.to(wide) + shift).to(dtype)
    sd = torch.sqrt(m2 / max(n - 1, 1)).to(dtype) if want_sd else None
    return mu, sd


def _abs_into(block: Tensor, out: Tensor) -> Tensor:
    """``|block|`` written into ``out`` (which may be of a wider dtype)."""
    if block.dtype == out.dtype:
        return torch.abs(block, out=out)
    return out.copy_(block).abs_()


def merge_moments(means, m2s, counts, *, dtype: torch.dtype = torch.float64):
    """Mean and centred sum of squares (M2) of a union of groups, from each group's.

    The parallel formula of Chan et al.: ``mean = sum(n_i mean_i) / n`` and
    ``M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2)``, computed in ``dtype``.
    ``m2s=None`` returns only the mean (and None).
    """
    means_t = torch.stack(list(means)).to(dtype)
    counts_t = torch.tensor(list(counts), dtype=dtype, device=means_t.device)
    mean = (means_t * counts_t).sum() / counts_t.sum()
    if m2s is None:
        return mean, None
    m2 = torch.stack(list(m2s)).to(dtype).sum() + (counts_t * (means_t - mean).square()).sum()
    return mean, m2


def drop_and_keep(
    signal: Tensor,
    *,
    p_base: float,
    p_signal: float,
    tau: float = 0.5,
    prefer: str = "small",
    normalize: str = "zscore",
    scope: str = "layer",
    eps: float = EPS,
    stats: Optional[Tuple[Tensor, Tensor]] = None,
    finite: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    want_prob: bool = True,
    draw: bool = True,
    stats_out: Optional[list] = None,
) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor]:
    """:func:`drop_probability` and :func:`keep_mask` in one blocked pass: ``(drop_prob, keep, finite)``.

    The same values as ``p = drop_probability(signal, ...)`` followed by
    ``keep_mask(p, generator=generator)`` (same generator state, same mask),
    without full-size temporaries: ``drop_prob`` is only materialised when
    ``want_prob`` (otherwise ``None``); ``keep`` is ``None`` unless ``draw``.
    ``finite`` is a 0-dim bool tensor: whether the signal was finite (if not,
    every edge got ``p_base``; see :func:`drop_probability`); given, it is
    used instead of being computed. ``normalize="rank"`` is not supported here.
    ``stats_out``, a list, receives the ``(mean, sd)`` the scores used (either
    may be None), from which :func:`drop_probability` with ``stats=`` and
    ``finite=`` gives the same probabilities for any part of the signal later.
    Arguments are validated by the callers.
    """
    if normalize == "rank":
        raise ValueError("drop_and_keep: normalize='rank' needs the full tensor; use drop_probability")
    row = scope == "row" and signal.dim() >= 2
    small = prefer == "small"
    dtype = work_dtype(signal.dtype)
    device = signal.device
    mu = sd = den = None
    if normalize in ("zscore", "mean"):
        if stats is None:
            mu, sd = _streamed_stats(signal, scope, want_sd=normalize == "zscore")
            if finite is None:
                # The mean (accumulated per block, merged in float64) is finite exactly when every entry is.
                finite = torch.isfinite(mu).all()
        else:
            mu, sd = stats
        if normalize == "zscore":
            # (a - mu) / -(sd + eps) == -((a - mu) / (sd + eps)) exactly: sigmoid(-z) in one divide.
            den = (sd + eps).neg_() if small else sd + eps
        else:
            den = (mu + eps).neg_() if small else mu + eps
    if finite is None:
        finite = torch.isfinite(signal).all()
    elif not isinstance(finite, Tensor):
        finite = torch.tensor(bool(finite), device=device)
    if stats_out is not None:
        stats_out.extend((mu, sd))
    if _COMPILE["enabled"] and draw:  # one fused kernel over the whole tensor: none of the blocked path's buffers
        return _drop_and_keep_compiled(signal, row, normalize, small, mu, den, finite, p_base, p_signal, tau, generator, want_prob)
    prob = torch.empty(signal.shape, dtype=dtype, device=device) if want_prob else None
    keep = torch.empty(signal.shape, dtype=torch.bool, device=device) if draw else None
    blocks = _blocks(signal, scope)
    size = blocks[0][1].numel()
    buf = None if want_prob else torch.empty(size, dtype=dtype, device=device)
    cond_buf = torch.empty(size, dtype=torch.bool, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    cpu = device.type == "cpu"
    ubuf = torch.empty(size, dtype=dtype, device=device) if (draw and cpu) else None
    prob_view = None if prob is None else (prob.reshape(signal.shape[0], -1) if row else prob.view(-1))
    keep_view = None if keep is None else (keep.view(signal.shape[0], -1) if row else keep.view(-1))
    if row and mu is not None:
        mu_rows = mu.reshape(-1, 1) if mu.dim() else mu
        den_rows = den.reshape(-1, 1) if den.dim() else den
    # On the CPU, looking at the finiteness flag is free (no device queue to
    # wait for): a finite signal lets one threshold op stand in for
    # compare-and-select, and a non-finite one means p = p_base outright.
    # Elsewhere (no host sync) a where() maps NaN scores to q = 0, and a
    # second one puts p_base on every edge of a non-finite signal.
    finite_host = bool(finite) if cpu else None
    p_base_t = torch.full((), p_base, dtype=dtype, device=device)
    for start, blk in blocks:
        count = blk.numel()
        stop = start + blk.shape[0]
        out = prob_view[start:stop] if prob_view is not None else buf[:count].view(blk.shape)
        if finite_host is False:
            a = out.fill_(p_base)
        else:
            a = _score_block(blk, out, normalize, small, row, start, stop, mu, den,
                             mu_rows if row and mu is not None else None,
                             den_rows if row and mu is not None else None)
            if finite_host:
                torch.nn.functional.threshold_(a, tau, 0.0)  # q = c * [c > tau]
            else:
                cond = torch.gt(a, tau, out=cond_buf[:count].view(blk.shape))
                torch.where(cond, a, zero, out=a)  # q; a NaN score gives q = 0
            torch.add(p_base_t, a, alpha=p_signal, out=a)  # p = p_base + p_signal * q
            if finite_host is None:
                torch.where(finite, a, p_base_t, out=a)
        if draw:
            kb = keep_view[start:stop]
            if cpu:
                u = _uniform_block(count, generator, ubuf).view(blk.shape)
            else:
                u = torch.rand(blk.shape, generator=generator, device=device, dtype=dtype)
            if cpu:
                # float compare, then float -> bool: both fast kernels (a bool-out compare is not).
                kb.copy_(torch.gt(u, a, out=u))
            else:
                torch.gt(u, a, out=kb)
    return prob, keep, finite


def _score_block(blk, out, normalize, small, row, start, stop, mu, den, mu_rows, den_rows):
    """``c = sigmoid(-z)`` (or ``sigmoid(z)`` for prefer="big") of one block, into ``out``."""
    a = _abs_into(blk, out)
    if normalize in ("zscore", "mean"):
        m_b, d_b = (mu_rows[start:stop], den_rows[start:stop]) if row and mu_rows.dim() else (mu, den)
        a.sub_(m_b).div_(d_b)  # zscore: (a - mu) / -(sd + eps); mean: (a - mu) / -(mu + eps)
    elif small:
        a.neg_()
    return a.sigmoid_()


# ----------------------------------------------------------------------------- torch.compile path
#
# The blocked eager path above runs about ten elementwise kernels per block.
# With the compile path on, the score, threshold, uniform and comparison of
# :func:`drop_and_keep` are one fused kernel generated by ``torch.compile``
# (Inductor) over the whole tensor; the statistics and the random bits stay
# eager, so the generator is advanced exactly as before and the masks are the
# same as the eager path's up to float rounding inside the fused kernel (an
# edge flips only where ``p`` and its 16-bit uniform agree to the last bit,
# about once in 10^7 edges). Compilation costs seconds to a minute per kernel
# variant and process, once; it pays off on large layers. Off by default: turn
# it on with :func:`set_compile`, the :func:`compiled` context manager, or
# ``DDC_COMPILE=1`` in the environment.

_COMPILE = {"enabled": os.environ.get("DDC_COMPILE", "0") not in ("", "0", "false", "False")}
_KERNELS: dict = {}


def set_compile(enabled: bool) -> bool:
    """Turn the ``torch.compile`` path of :func:`drop_and_keep` on or off; returns the previous setting."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_compile: enabled={enabled!r} must be True or False")
    previous = _COMPILE["enabled"]
    _COMPILE["enabled"] = enabled
    return previous


def compile_enabled() -> bool:
    return _COMPILE["enabled"]


@contextlib.contextmanager
def compiled(enabled: bool = True):
    """``with compiled():`` runs the block with the compile path on (or off), then restores it."""
    previous = set_compile(enabled)
    try:
        yield
    finally:
        set_compile(previous)


def _fused_kernel(normalize: str, small: bool, bits: bool, want_prob: bool):
    key = (normalize, small, bits, want_prob)
    if key not in _KERNELS:

        def kernel(signal, draws, mu, den, finite, p_base, p_signal, tau):
            # the eager path's operations, in its order (see _score_block and drop_and_keep)
            a = signal.abs().to(p_base.dtype)
            if normalize in ("zscore", "mean"):
                a = (a - mu) / den
            elif small:
                a = -a
            c = torch.sigmoid(a)
            q = torch.where(c > tau, c, torch.zeros_like(c))  # a NaN score gives q = 0
            p = torch.where(finite, p_base + p_signal * q, p_base)  # a non-finite signal: p_base everywhere
            u = draws.to(p.dtype) * (2.0**-16) + (0.5 + 2.0**-17) if bits else draws
            keep = u > p
            return (p, keep) if want_prob else keep

        _KERNELS[key] = torch.compile(kernel, dynamic=True, fullgraph=True)
    return _KERNELS[key]


def _drop_and_keep_compiled(signal, row, normalize, small, mu, den, finite, p_base, p_signal, tau, generator, want_prob):
    dtype, device = work_dtype(signal.dtype), signal.device
    flat = signal.reshape(signal.shape[0], -1) if row else signal.reshape(-1)
    n = flat.numel()
    bits = device.type == "cpu"
    if bits:
        words = torch.empty((n + 3) // 4, dtype=torch.int64)
        words.random_(-(2**63), None, generator=generator)  # the eager path's bits, edge for edge
        draws = words.view(torch.int16)[:n].view(flat.shape)
    else:
        draws = torch.rand(flat.shape, generator=generator, device=device, dtype=dtype)

    def as_scope(t):
        if t is None:
            return torch.zeros((), dtype=dtype, device=device)
        return t.reshape(-1, 1) if row and t.dim() else t

    scalars = [torch.full((), v, dtype=dtype, device=device) for v in (p_base, p_signal, tau)]
    result = _fused_kernel(normalize, small, bits, want_prob)(flat, draws, as_scope(mu), as_scope(den), finite, *scalars)
    prob, keep = result if want_prob else (None, result)
    return (None if prob is None else prob.view(signal.shape)), keep.view(signal.shape), finite
