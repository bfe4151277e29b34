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

from typing import Optional, Tuple

import torch
from torch import Tensor

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


def _reduce_dims(x: Tensor, scope: str) -> Optional[Tuple[int, ...]]:
    """Dimensions the statistics run over: all (layer) or all but the first (row)."""
    if scope == "layer" or x.dim() < 2:
        return None
    return tuple(range(1, x.dim()))


def signal_stats(magnitude: Tensor, scope: str = "layer") -> Tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of ``|signal|`` over the scope.

    ``magnitude`` is ``|S|``. For ``scope="row"`` the statistics are taken per
    output unit (first dimension) and keep their dimensions for broadcasting.
    One fused pass (``torch.std_mean``) over the tensor.
    """
    dims = _reduce_dims(magnitude, scope)
    if dims is None:
        sd, mu = torch.std_mean(magnitude)
    else:
        sd, mu = torch.std_mean(magnitude, dim=dims, keepdim=True)
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
    - ``mean``: ``a / mean(a) - 1``;
    - ``rank``: the within-scope percentile ``(rank + 0.5) / n`` mapped through
      the standard normal quantile function, so it lives on a z-like scale.

    ``stats`` overrides the ``(mean, std)`` pair, which is how a global scope
    across several layers is implemented.
    """
    check_choice("normalize", normalize, NORMALIZE)
    check_choice("scope", scope, SCOPE)
    if normalize == "none":
        return magnitude
    if normalize == "rank":
        return _rank_score(magnitude, scope)
    if stats is None:
        mu, sd = signal_stats(magnitude, scope)
    else:
        mu, sd = stats
    if normalize == "mean":
        return magnitude / (mu + eps) - 1.0
    return (magnitude - mu) / (sd + eps)


def _rank_score(magnitude: Tensor, scope: str) -> Tensor:
    if scope == "row" and magnitude.dim() >= 2:
        flat = magnitude.reshape(magnitude.shape[0], -1)
    else:
        flat = magnitude.reshape(1, -1)
    n = flat.shape[1]
    order = flat.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(n, device=flat.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    percentile = (ranks.to(magnitude.dtype) + 0.5) / n
    return torch.special.ndtri(percentile).reshape(magnitude.shape)


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
) -> Tensor:
    """Per-edge drop probability ``p = p_base + p_signal * q``.

    ``q = c * [c > tau]`` with ``c = sigmoid(-z)`` (``prefer="small"``: edges
    with small signal are dropped more often, the paper's DDC) or
    ``c = sigmoid(z)`` (``prefer="big"``), where ``z`` is the normalised
    ``|signal|`` (see :func:`normalized_signal`).

    Signals with zero variance give ``z = 0``, ``c = 0.5`` and hence ``p_base``
    everywhere (``0.5 > tau`` is false for the default ``tau``). A signal with
    non-finite entries makes the scope's statistics NaN; NaN never passes the
    threshold, so every edge of that scope falls back to ``p_base``.

    Args:
        signal: gradient or weight, any shape (``out x in`` or ``out x in x k...``).
        p_base, p_signal: probabilities with ``p_base + p_signal <= 1``.
        tau: threshold in (0, 1) on the sigmoid output.
    Returns:
        A tensor of the signal's shape and dtype with values in ``[0, 1]``.
    """
    check_drop_config(p_base, p_signal, tau)
    check_choice("prefer", prefer, PREFER)
    z = normalized_signal(signal.abs(), normalize=normalize, scope=scope, eps=eps, stats=stats)
    c = torch.sigmoid(z if prefer == "big" else -z)
    # torch.where rather than c * (c > tau): a NaN score must give q = 0, not NaN.
    q = torch.where(c > tau, c, torch.zeros((), dtype=c.dtype, device=c.device))
    return q.mul_(p_signal).add_(p_base)


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
    if uniform is None:
        size = tuple(shape) if shape is not None else tuple(drop_prob.shape)
        uniform = torch.rand(size, generator=generator, device=drop_prob.device, dtype=_float_dtype(drop_prob))
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
) -> Tensor:
    """The factor that multiplies kept weights, so that ``W_eff = W * keep * scale``.

    - ``realized`` (reference code): ``1 / (mean(keep) + eps)``, the realised
      keep fraction of the layer (per example when ``batch_dims=1``);
    - ``expected``: ``1 / (1 - mean(drop_prob))``, classic inverted dropout;
    - ``per_edge``: ``1 / (1 - drop_prob)``, so ``E[W_eff] = W`` edge by edge;
    - ``none``: 1.

    Returns a tensor that broadcasts against ``keep``.
    """
    check_choice("recalibration", mode, RECALIBRATION)
    dtype = torch.get_default_dtype() if drop_prob is None else _float_dtype(drop_prob)
    if mode == "none":
        return torch.ones((), dtype=dtype, device=keep.device)
    if mode == "realized":
        dims = tuple(range(batch_dims, keep.dim()))
        rate = keep.to(dtype).mean(dim=dims, keepdim=True) if dims else keep.to(dtype)
        return 1.0 / (rate + eps)
    if drop_prob is None:
        raise ValueError(f"recalibration={mode!r} needs drop_prob")
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
    scale = keep_scale(keep_mask, mode=mode, drop_prob=drop_prob, eps=eps, batch_dims=batch_dims)
    return apply_keep(weight, keep_mask, scale)


def apply_keep(weight: Tensor, keep_mask: Tensor, scale: Tensor) -> Tensor:
    """``(weight * keep_mask) * scale``: the one place the masked weight is formed."""
    return (weight * keep_mask) * scale
