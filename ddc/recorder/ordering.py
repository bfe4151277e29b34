"""Order statistics of the recorder's sort samples, computed on the host with numpy.

numpy's vectorised sorts beat ``torch.sort`` on the CPU for these small
vectors, and on an accelerator the samples wait on the device and are
summarised at the flush, so a step launches no sort at all. All inputs are
1-D numpy arrays; quantiles interpolate linearly, as ``torch.quantile`` and
``np.quantile`` do, and ranks are averaged over ties, as scipy's ``rankdata``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..functional import normalized_signal


def quantile_labels(quantiles: Sequence[float]) -> List[str]:
    """Metric suffixes of ``quantiles``: 0.1 -> ``q10``, 0.5 -> ``q50``.

    Raises:
        Nothing of its own.
    """
    return [f"q{round(level * 100):02d}" for level in quantiles]


def unbiased_std(square_sum: float, count: int) -> float:
    """Standard deviation with the N-1 denominator from the sum of squared deviations (0 for one value).

    Raises:
        ValueError: ``square_sum`` is negative (``math.sqrt``: math domain error).
    """
    return math.sqrt(square_sum / (count - 1)) if count > 1 else 0.0


@lru_cache(maxsize=256)
def _quantile_positions(size: int, quantiles: Tuple[float, ...]):
    """Indices below/above and interpolation weights of ``quantiles`` in a sorted vector of ``size``."""
    position = np.asarray(quantiles, dtype=np.float64) * (size - 1)
    low = np.floor(position).astype(np.intp)
    high = np.ceil(position).astype(np.intp)
    return low, high, position - low


def sorted_quantiles(ordered: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles (float64, one per level) of an ascending vector.

    Raises:
        IndexError: ``ordered`` is empty.
    """
    low, high, fraction = _quantile_positions(ordered.size, tuple(quantiles))
    below = ordered[low].astype("float64")
    return below + (ordered[high] - below) * fraction


def tied_ranks(ordered: np.ndarray) -> np.ndarray:
    """0-based average ranks of an ascending vector, in its own order (ties share their mean position).

    Raises:
        Nothing of its own.
    """
    size = ordered.size
    new = ordered[1:] != ordered[:-1]
    if new.all():
        return np.arange(size, dtype=np.float64)
    starts = np.flatnonzero(np.concatenate(([True], new)))
    sizes = np.diff(np.append(starts, size))
    return np.repeat(starts + (sizes - 1) / 2, sizes)


def average_ranks(ordered: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Average ranks (as :func:`tied_ranks`) of the vector that ``order`` sorts into ``ordered``.

    Raises:
        IndexError: ``order`` holds a position outside ``ordered``.
    """
    ranks = np.empty(ordered.size)
    ranks[order] = tied_ranks(ordered)
    return ranks


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two vectors of one length (NaN when either is constant).

    Raises:
        ValueError: the vectors differ in length (numpy's ``dot``).
    """
    first, second = first - first.mean(), second - second.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.dot(first, second) / np.sqrt(np.dot(first, first) * np.dot(second, second)))


def signal_quantiles(magnitude: np.ndarray, mean: float, square_sum: float, *, count: int, quantiles: Sequence[float]) -> List[float]:
    """Quantiles of ``|signal|``, then of its layer z-score ``(|g| - mean) / (sd + 1e-9)``.

    Args:
        magnitude: ``|signal|`` of the sort sample, 1-D.
        mean, square_sum, count: the layer's mean of ``|signal|`` and sum of
            squared deviations over ``count`` edges (``sd`` with N-1; Yang &
            Chen, arXiv 2502.19948, section 3, the z-score of the drop
            probability).
        quantiles: levels in [0, 1].
    Returns:
        ``2 * len(quantiles)`` floats: the ``grad_abs_q*``, then the ``zscore_q*``.
    Raises:
        IndexError: ``magnitude`` is empty (:func:`sorted_quantiles`).
    """
    levels = sorted_quantiles(np.sort(magnitude), quantiles)
    # DDC's own score at those levels (z is increasing in |g|): ddc.functional.normalized_signal with the layer's statistics
    zscores = normalized_signal(torch.from_numpy(np.asarray(levels, dtype=np.float64)), stats=(mean, unbiased_std(square_sum, count)))
    return levels.tolist() + zscores.tolist()


def drop_prob_order_statistics(drop_prob: np.ndarray, used: Optional[np.ndarray] = None, *, quantiles: Sequence[float]) -> List[float]:
    """Quantiles of the drop probability, and its Spearman correlation with the signal behind it.

    When the drop probability is a monotone function of ``used`` on the
    sample (DDC with layer statistics), the one sort of ``used`` orders both;
    otherwise the drop probability gets its own sort. Quantiles and average
    ranks do not depend on which sort ordered the ties.

    Args:
        drop_prob: drop probabilities of the sort sample, 1-D.
        used: ``|signal|`` behind them on the same edges, or None.
        quantiles: levels in [0, 1].
    Returns:
        The ``drop_prob_q*`` values, then ``rank_corr_grad_drop`` when
        ``used`` is given with ``drop_prob``'s length.
    Raises:
        IndexError: ``drop_prob`` is empty (:func:`sorted_quantiles`).
    """
    if used is None or used.size != drop_prob.size:
        return sorted_quantiles(np.sort(drop_prob), quantiles).tolist()
    order_used = np.argsort(used)
    by_used = drop_prob[order_used]
    used_ranks = tied_ranks(used[order_used])  # ranks in the order of ``used``
    steps = np.diff(by_used)
    if (steps <= 0).all():  # one sort orders both: read ``by_used`` backwards
        ordered = by_used[::-1]
        drop_ranks = tied_ranks(ordered)[::-1]
    elif (steps >= 0).all():
        ordered = by_used
        drop_ranks = tied_ranks(ordered)
    else:
        order = np.argsort(drop_prob, kind="stable")  # (faster than the default on many ties)
        ordered = drop_prob[order]
        drop_ranks = average_ranks(ordered, order)[order_used]
    return sorted_quantiles(ordered, quantiles).tolist() + [pearson(used_ranks, drop_ranks)]
