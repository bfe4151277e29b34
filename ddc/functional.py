"""Pure tensor maths of Dynamic DropConnect: no state, no modules.

The method of Yang & Chen, "Dynamic DropConnect" (arXiv 2502.19948, Sec. 3),
with the choices of the authors' reference code (``docs/method.md``), in the
order a reader meets it:

1. :func:`normalized_signal`: ``|S|`` (the last gradient of a weight, or the
   weight itself) to a z-like score, ``z = (|S| - mean) / (std + eps)``.
2. :func:`drop_curve`: the score to a drop probability,
   ``p = p_base + p_signal * c * [c > tau]`` with ``c = sigmoid(-z)``.
3. :func:`drop_probability`: both steps, plus the rule for non-finite signals.
4. :func:`keep_mask`: the Bernoulli keep mask ``keep = u > p``.
5. :func:`keep_scale` / :func:`recalibrate`: ``W_eff = W * keep * scale``.

These functions are what runs. The CPU fast path that DDC's layers use (the
statistics in one streaming pass, probabilities and mask block by block,
16-bit uniforms) and the ``torch.compile`` path live in the private module
``ddc._fastpath``, built from :func:`normalized_signal` and
:func:`drop_curve` and tested against :func:`drop_probability` and
:func:`keep_mask`. The functions reproduce the authors' reference
implementation (``tests/reference/ddc_reference_vectors.json``) to float32
precision.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

PREFER = ("small", "big")
NORMALIZE = ("zscore", "none", "mean", "rank")
SCOPE = ("layer", "row")
RECALIBRATION = ("realized", "expected", "per_edge", "none")

EPS = 1e-9


def check_choice(name: str, value, allowed) -> None:
    """Raise a ``ValueError`` naming ``name`` and the allowed values.

    Raises:
        ValueError: ``value`` is not one of ``allowed``.
    """
    if value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {choices}")


def check_probability(name: str, value: float) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is a number in ``[0, 1]``.

    Raises:
        ValueError: ``value`` is not a real number in ``[0, 1]``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be a real number in [0, 1], not a {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")


def check_drop_config(p_base: float, p_signal: float, tau: float) -> None:
    """Validate DDC's probabilities; shared by the functional API and the modules.

    Raises:
        ValueError: ``p_base`` or ``p_signal`` outside ``[0, 1]``, their sum
            above 1 (``docs/method.md`` §1 step 6), or ``tau`` outside ``(0, 1)``.
    """
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

    Raises:
        Nothing.
    """
    return dtype if dtype == torch.float64 else torch.float32


def _as_work(tensor: Tensor) -> Tensor:
    return tensor if tensor.dtype == work_dtype(tensor.dtype) else tensor.to(work_dtype(tensor.dtype))


# ----------------------------------------------------------------------------- 1. the score


def _reduce_dims(tensor: Tensor, scope: str) -> Optional[Tuple[int, ...]]:
    """Dimensions the statistics run over: all (layer) or all but the first (row)."""
    if scope == "layer" or tensor.dim() < 2:
        return None
    return tuple(range(1, tensor.dim()))


def signal_stats(magnitude: Tensor, scope: str = "layer") -> Tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of ``|signal|`` over the scope (``docs/method.md`` §1 step 2).

    Args:
        magnitude: ``|S|``, any shape.
        scope: ``"layer"`` (every element) or ``"row"`` (per output unit, the
            first dimension).
    Returns:
        ``(mean, std)``: 0-dim tensors for the layer scope, ``(rows, 1, ...)``
        (the signal's number of dimensions, for broadcasting) for the row
        scope; in at least float32 (:func:`work_dtype`). A scope of one edge
        has standard deviation 0 (not the NaN of ``N - 1 = 0``): one value
        does not vary.
    Raises:
        Nothing of its own: any ``scope`` but ``"layer"`` is taken as the row
        scope (callers check it).
    """
    magnitude = _as_work(magnitude)
    dims = _reduce_dims(magnitude, scope)
    count = magnitude.numel() if dims is None else math.prod(magnitude.shape[d] for d in dims)
    correction = 1 if count > 1 else 0
    if dims is None:
        std, mean = torch.std_mean(magnitude, correction=correction)
    else:
        std, mean = torch.std_mean(magnitude, dim=dims, keepdim=True, correction=correction)
    return mean, std


def normalized_signal(
    magnitude: Tensor,
    *,
    normalize: str = "zscore",
    scope: str = "layer",
    eps: float = EPS,
    stats: Optional[Tuple[Tensor, Tensor]] = None,
    inplace: bool = False,
) -> Tensor:
    """Map ``|S|`` to the z-like score fed to the sigmoid (``docs/method.md`` §1 steps 2-3 and the ablation).

    - ``zscore``: ``(a - mean) / (std + eps)`` (the paper);
    - ``none``: ``a`` itself (DDC then collapses to DropConnect(p_base) for
      tiny gradients, since sigmoid(-a) stays near 0.5);
    - ``mean``: ``(a - mean) / (mean + eps)``, i.e. ``a / mean(a) - 1`` where
      ``mean(a) >> eps`` (equal values give exactly 0). Like ``std + eps`` in
      the z-score, ``eps`` (1e-9) shrinks the score when the mean magnitude is
      itself near ``eps``: by ``eps / (mean + eps)``, 1e-6 relative at a mean
      of 1e-3, 29% at 2.5e-9. Pass ``eps`` smaller for such signals;
    - ``rank``: the within-scope percentile ``(rank + 0.5) / n`` mapped through
      the standard normal quantile function, so it lives on a z-like scale;
      tied values share their average rank.

    Args:
        magnitude: ``|S|``, any shape; computed in at least float32.
        stats: the ``(mean, std)`` to use instead of :func:`signal_stats`
            (shaped as it returns them; ``std`` may be None for ``mean``):
            how a global scope across layers, and the fast path's streamed
            statistics, enter.
        inplace: overwrite ``magnitude`` (which must then be in its work
            dtype) with the score; for ``none`` it is returned as it is.
    Returns:
        A tensor of ``magnitude``'s shape. Equal values (and a scope of one
        edge) give ``z = 0`` under every normalisation but ``none``.
    Raises:
        ValueError: ``normalize`` or ``scope`` not one of the allowed values.
    """
    check_choice("normalize", normalize, NORMALIZE)
    check_choice("scope", scope, SCOPE)
    magnitude = _as_work(magnitude)
    if normalize == "none":
        return magnitude
    if normalize == "rank":
        return _rank_score(magnitude, scope)
    mean, std = signal_stats(magnitude, scope) if stats is None else stats
    spread = std if normalize == "zscore" else mean
    if inplace:
        return magnitude.sub_(mean).div_(spread + eps)
    return (magnitude - mean) / (spread + eps)


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
    """0-based ranks along the last dimension, ties sharing the mean of their positions.

    The same as scipy's ``rankdata(method="average") - 1`` per row.

    Args:
        values: ``(rows, n)``.
    Returns:
        ``(rows, n)`` float64 ranks in ``[0, n - 1]``.
    Raises:
        ValueError: ``values`` is not 2-D (the unpacking of its shape).
    """
    rows, count = values.shape
    ordered, order = values.sort(dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    # a group id per sorted position, unique across rows
    group = starts.cumsum(1) - 1 + torch.arange(rows, device=values.device).unsqueeze(1) * count
    positions = torch.arange(count, device=values.device, dtype=torch.float64).expand(rows, count)
    flat_group = group.reshape(-1)
    sums = torch.zeros(rows * count, dtype=torch.float64, device=values.device).index_add_(0, flat_group, positions.reshape(-1))
    sizes = torch.bincount(flat_group, minlength=rows * count).to(torch.float64)
    mean_position = (sums / sizes.clamp_min(1)).gather(0, flat_group).reshape(rows, count)
    return torch.empty_like(mean_position).scatter_(1, order, mean_position)


# ----------------------------------------------------------------------------- 2. the curve


def drop_curve(
    score: Tensor,
    *,
    p_base: float,
    p_signal: float,
    tau: float = 0.5,
    prefer: str = "small",
    inplace: bool = False,
) -> Tensor:
    """DDC's drop probability as a function of the score: ``p = p_base + p_signal * c * [c > tau]``.

    ``c = sigmoid(-z)`` for ``prefer="small"`` (edges with a small signal are
    dropped more often: the paper's DDC, DropSmallGd in the reference code)
    or ``c = sigmoid(z)`` for ``prefer="big"`` (DropBigGd). ``docs/method.md``
    §1 steps 4-6; arXiv 2502.19948, Sec. 3. With ``tau = 0.5`` and
    ``prefer="small"`` exactly the edges with ``z < 0`` get the signal term,
    and there ``c`` lies in (0.5, 1).

    Args:
        score: ``z`` (see :func:`normalized_signal`), any shape, a floating dtype.
        p_base, p_signal: probabilities with ``p_base + p_signal <= 1``.
        tau: threshold in (0, 1) on ``c``.
        inplace: overwrite ``score`` (which must not require grad) with the
            result, the same values without temporaries. Without it the curve
            is computed out of place and is differentiable in ``score``.
    Returns:
        A tensor of ``score``'s shape and dtype with values in
        ``[p_base, p_base + p_signal]`` (NaN where the score is NaN).
    Raises:
        ValueError: a probability, ``tau`` or ``prefer`` out of range (named).
    """
    check_drop_config(p_base, p_signal, tau)
    check_choice("prefer", prefer, PREFER)
    # p = p_base + p_signal * q, rounded once (a 0-dim tensor as the first term: see the compile path)
    base = torch.full((), p_base, dtype=score.dtype, device=score.device)
    if not inplace:  # the readable steps, out of place (and differentiable)
        c = torch.sigmoid(-score if prefer == "small" else score)
        q = torch.nn.functional.threshold(c, tau, 0.0)  # c * [c > tau]
        return torch.add(base, q, alpha=p_signal)
    # the same steps in the score's memory (the fast path's blocks): the same values
    if prefer == "small":
        score.neg_()
    score.sigmoid_()
    torch.nn.functional.threshold_(score, tau, 0.0)
    return torch.add(base, score, alpha=p_signal, out=score)


# ----------------------------------------------------------------------------- 3. both


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
    finite: Union[bool, Tensor, None] = None,
) -> Tensor:
    """Per-edge drop probability: ``drop_curve(normalized_signal(|signal|))`` (``docs/method.md`` §1).

    **Non-finite signals, one rule for every option:** if any entry of
    ``signal`` is inf or NaN, every edge gets ``p_base`` (whatever the
    normalisation and scope). Zero-variance signals (and scopes of one edge)
    give ``z = 0``, ``c = 0.5`` and hence ``p_base`` for the default ``tau``.

    Args:
        signal: gradient or weight, any shape (``out x in`` or ``out x in x k...``);
            detached (no gradient flows through drop probabilities), so a
            parameter that requires grad can be passed as it is.
        p_base, p_signal, tau, prefer: see :func:`drop_curve`.
        normalize, scope, eps, stats: see :func:`normalized_signal`.
        finite: whether the signal is finite, when the caller knows it (a
            bool or a 0-dim bool tensor, e.g. with ``stats`` pooled over
            layers); otherwise it is computed.
    Returns:
        A tensor of the signal's shape with values in ``[p_base, p_base + p_signal]``,
        in the signal's dtype, or float32 for 16-bit signals (:func:`work_dtype`).
    Raises:
        ValueError: a probability, ``tau`` or choice out of range (named).
    """
    check_drop_config(p_base, p_signal, tau)
    check_choice("prefer", prefer, PREFER)
    magnitude = _as_work(signal.detach()).abs()  # a new tensor: the steps below may work in place
    score = normalized_signal(magnitude, normalize=normalize, scope=scope, eps=eps, stats=stats, inplace=True)
    drop_prob = drop_curve(score, p_base=p_base, p_signal=p_signal, tau=tau, prefer=prefer, inplace=True)
    if finite is None:
        finite = torch.isfinite(signal).all()
    return _fall_back(drop_prob, finite, p_base)


def _fall_back(drop_prob: Tensor, finite: Union[bool, Tensor], p_base: float) -> Tensor:
    """``drop_prob``, or ``p_base`` on every edge when the signal was not finite.

    In place; off the CPU with a tensor ``finite`` without a host sync.
    """
    if isinstance(finite, bool) or drop_prob.device.type == "cpu":
        return drop_prob if bool(finite) else drop_prob.fill_(p_base)
    base = torch.full((), p_base, dtype=drop_prob.dtype, device=drop_prob.device)
    return torch.where(finite, drop_prob, base, out=drop_prob)


# ----------------------------------------------------------------------------- 4. the mask


def keep_mask(
    drop_prob: Tensor,
    *,
    uniform: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    shape: Optional[Tuple[int, ...]] = None,
) -> Tensor:
    """Bernoulli keep mask ``keep = u > drop_prob`` with ``u ~ U[0, 1)`` (``docs/method.md`` §2).

    On the CPU the uniforms have 16 random bits each (``ddc._fastpath.MASK_BITS``:
    an edge is dropped with probability within ``2**-17`` of ``drop_prob``;
    0 never drops, 1 always drops) and the mask is drawn block by block
    without a full-size uniform tensor; other devices use ``torch.rand``.

    Args:
        drop_prob: drop probabilities, any shape (a 0-dim tensor for one ``p``).
        uniform: the draws, of the mask's shape (the reference vectors supply them).
        generator: the random source (default: the global RNG).
        shape: a mask larger than ``drop_prob`` that broadcasts against it,
            e.g. one mask per example ``(batch, out, in)`` for a weight-shaped
            ``drop_prob``. Default: ``drop_prob``'s shape.
    Returns:
        A bool tensor, True where the edge is kept.
    Raises:
        Nothing of its own; a ``shape`` that ``drop_prob`` does not broadcast
        to, or a ``uniform`` that does not broadcast against it, raises torch's ``RuntimeError``.
    """
    if uniform is not None:
        return uniform > drop_prob
    size = tuple(shape) if shape is not None else tuple(drop_prob.shape)
    if drop_prob.device.type == "cpu":
        return _fastpath.keep_mask_cpu(drop_prob, size, generator)
    uniform = torch.rand(size, generator=generator, device=drop_prob.device, dtype=_float_dtype(drop_prob))
    return uniform > drop_prob


# ----------------------------------------------------------------------------- 5. re-calibration


def _float_dtype(tensor: Tensor) -> torch.dtype:
    return tensor.dtype if tensor.is_floating_point() else torch.get_default_dtype()


def keep_scale(
    keep: Tensor,
    *,
    mode: str = "realized",
    drop_prob: Optional[Tensor] = None,
    eps: float = EPS,
    batch_dims: int = 0,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """The factor that multiplies kept weights, so that ``W_eff = W * keep * scale`` (``docs/method.md`` §2).

    - ``realized`` (reference code): ``1 / (mean(keep) + eps)``, the realised
      keep fraction of the layer (per example when ``batch_dims=1``);
    - ``expected``: ``1 / (1 - mean(drop_prob))``, classic inverted dropout;
    - ``per_edge``: ``1 / (1 - drop_prob)``, so ``E[W_eff] = W`` edge by edge;
    - ``none``: 1.

    Args:
        keep: bool mask, any shape; with ``batch_dims=1`` its first dimension
            indexes examples.
        drop_prob: needed by ``expected`` and ``per_edge``; broadcasts against ``keep``.
        dtype: the result's dtype (give the weight's, so that the masked
            weight keeps it); default ``drop_prob``'s work dtype or the default dtype.
    Returns:
        A tensor that broadcasts against ``keep``, computed in at least float32.
    Raises:
        ValueError: an unknown ``mode``, or ``expected``/``per_edge`` without ``drop_prob``.
    """
    scale = _keep_scale(keep, mode, drop_prob, eps, batch_dims)
    return scale if dtype is None or scale.dtype == dtype else scale.to(dtype)


def _keep_scale(keep, mode, drop_prob, eps, batch_dims):
    check_choice("recalibration", mode, RECALIBRATION)
    dtype = torch.get_default_dtype() if drop_prob is None else work_dtype(_float_dtype(drop_prob))
    if mode == "none":
        return torch.ones((), dtype=dtype, device=keep.device)
    if mode == "realized":
        return 1.0 / (_realized_keep_rate(keep, batch_dims, dtype) + eps)
    if drop_prob is None:
        raise ValueError(f"recalibration={mode!r} needs drop_prob")
    drop_prob = _as_work(drop_prob)
    if mode == "expected":
        return 1.0 / (1.0 - drop_prob.mean()).clamp_min(eps)
    return 1.0 / (1.0 - drop_prob).clamp_min(eps)


def _realized_keep_rate(keep: Tensor, batch_dims: int, dtype: torch.dtype) -> Tensor:
    """``mean(keep)`` over all but the first ``batch_dims`` dimensions, keeping them for broadcasting."""
    dims = tuple(range(batch_dims, keep.dim()))
    if not dims:
        return keep.to(dtype)
    # count_nonzero on the bool mask: the same value as keep.float().mean(),
    # without materialising a float copy of the mask.
    if len(dims) == keep.dim():
        count = torch.count_nonzero(keep).to(dtype)  # the full reduction has a fast kernel
    else:
        count = torch.count_nonzero(keep, dim=dims).to(dtype)
    edges = math.prod(keep.shape[d] for d in dims)
    return (count / edges).reshape(tuple(1 if d in dims else keep.shape[d] for d in range(keep.dim())))


def recalibrate(
    weight: Tensor,
    keep_mask: Tensor,
    *,
    mode: str = "realized",
    drop_prob: Optional[Tensor] = None,
    eps: float = EPS,
) -> Tensor:
    """Masked, re-scaled weight ``W_eff = W * keep * scale`` (see :func:`keep_scale`; ``docs/method.md`` §2).

    With ``mode="realized"`` this is the reference code's
    ``W * keep / (mean(keep) + eps)``.

    Args:
        weight: ``out x in`` or ``out x in x k...``.
        keep_mask: bool, the weight's shape, or one more leading dimension
            for a per-example mask (its realised keep rate is then taken per example).
    Returns:
        ``W_eff``, of ``keep_mask``'s shape and the weight's dtype.
    Raises:
        ValueError: a mask of another shape, or a bad ``mode`` (see :func:`keep_scale`).
    """
    batch_dims = keep_mask.dim() - weight.dim()
    if batch_dims not in (0, 1) or tuple(keep_mask.shape[batch_dims:]) != tuple(weight.shape):
        raise ValueError(
            f"keep_mask has shape {tuple(keep_mask.shape)}; expected the weight's shape "
            f"{tuple(weight.shape)} or one leading batch dimension"
        )
    scale = keep_scale(keep_mask, mode=mode, drop_prob=drop_prob, eps=eps, batch_dims=batch_dims, dtype=weight.dtype)
    return apply_keep(weight, keep_mask, scale)


def apply_keep(weight: Tensor, keep_mask: Tensor, scale: Tensor, *, out: Optional[Tensor] = None) -> Tensor:
    """``(weight * keep_mask) * scale``: the one place the masked weight is formed.

    On the CPU, outside autograd, for a bool mask of the weight's shape and a
    single scale, the product is formed block by block
    (``ddc._fastpath.masked_weight_cpu``): the same values, without full-size
    temporaries. ``out``, a contiguous tensor of the weight's shape and
    dtype, receives the result on that path (ignored elsewhere).

    Args:
        weight: any shape; ``keep_mask`` and ``scale`` broadcast against it.
    Returns:
        The masked weight.
    Raises:
        Nothing of its own; shapes that do not broadcast raise torch's ``RuntimeError``.
    """
    if _fastpath.masked_weight_applies(weight, keep_mask, scale):
        return _fastpath.masked_weight_cpu(weight, keep_mask, scale, out=out)
    return (weight * keep_mask) * scale


# The fast path is built from the functions above (import at the end: it imports this module).
from . import _fastpath  # noqa: E402
