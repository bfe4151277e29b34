"""Power of paired comparisons across seeds: what n seeds can detect, and how many seeds an effect needs.

The comparisons in this toolkit are paired t-tests on per-seed differences,
``d = method − baseline``, Holm-corrected over a family of ``m`` comparisons.
Power is that of the two-sided one-sample t-test on ``d``
(:class:`statsmodels.stats.power.TTestPower`) at the Bonferroni level
``alpha / m``: the level Holm applies to the comparison with the smallest
p-value, so the figures here are what the *first* rejection of a family needs
(later steps test at larger levels and need a little less).

Effect sizes are standardised: ``d_z = mean(d) / sd(d)``. Multiply by the
standard deviation of the per-seed differences to get accuracy units.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize
from scipy import stats as sps

__all__ = ["logrank_detectable_hazard_ratio", "minimum_detectable_effect", "power_at", "seeds_needed"]


def _check(alpha: float, family_size: int, power: float | None = None) -> float:
    if not (0 < alpha < 1):
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}")
    if int(family_size) != family_size or family_size < 1:
        raise ValueError(f"`family_size` must be a positive integer, got {family_size!r}")
    if power is not None and not (0 < power < 1):
        raise ValueError(f"`power` must be in (0, 1), got {power!r}")
    return alpha / int(family_size)


def _power_by_integration(n: int, effect: float, level: float) -> float:
    """Two-sided t-test power as an integral over the chi-square of the variance estimate.

    ``P(|Z + δ| > t_c sqrt(V / ν))`` with ``δ = d_z sqrt(n)``, ``V ~ χ²_ν``, ``ν = n − 1``:
    the noncentral-t tail probabilities that ``TTestPower`` computes, in a form that
    stays finite for the very large effects where its noncentral-t CDF returns NaN.
    """
    nu, delta = n - 1, effect * np.sqrt(n)
    t_crit = sps.t.ppf(1 - level / 2, nu)

    def integrand(v: float) -> float:
        c = t_crit * np.sqrt(v / nu)
        return sps.chi2.pdf(v, nu) * (sps.norm.cdf(-c - delta) + sps.norm.sf(c - delta))

    value, _ = integrate.quad(integrand, 0, np.inf, limit=200)
    return float(min(max(value, 0.0), 1.0))


def power_at(n: int, effect_size: float, *, alpha: float = 0.05, family_size: int = 1) -> float:
    """Probability that the paired t-test rejects on ``n`` pairs when the true ``d_z`` is ``effect_size``.

    Two-sided, at ``alpha / family_size``, from
    :meth:`TTestPower.power <statsmodels.stats.power.TTestPower.power>` (and the
    same probability by numerical integration where its noncentral-t CDF gives
    NaN, which happens for large effects at n = 2 or 3). NaN for ``n < 2``.

    Raises:
        ValueError: ``alpha`` is not in (0, 1) or ``family_size`` is not a positive integer.
    """
    from statsmodels.stats.power import TTestPower

    level = _check(alpha, family_size)
    if n < 2:
        return float("nan")
    effect = abs(float(effect_size))
    value = float(TTestPower().power(effect, int(n), level, alternative="two-sided"))
    return value if np.isfinite(value) else _power_by_integration(int(n), effect, level)


def minimum_detectable_effect(
    n: int, *, alpha: float = 0.05, family_size: int = 1, power: float = 0.8
) -> float:
    """Smallest ``d_z`` that ``n`` paired seeds detect with probability ``power``.

    Two-sided paired t-test at ``alpha / family_size`` (Holm's first step).
    Examples: n = 5, alpha 0.05, one comparison: 1.68; n = 10: 1.00. NaN for
    ``n < 2``. Solved with :func:`scipy.optimize.brentq` on
    :meth:`TTestPower.power <statsmodels.stats.power.TTestPower.power>` (its own
    ``solve_power`` gives up on the very large effects of n = 2).

    Raises:
        ValueError: ``alpha`` or ``power`` is not in (0, 1), or ``family_size`` is not a positive integer.
    """
    _check(alpha, family_size, power)
    if n < 2:
        return float("nan")

    def gap(effect: float) -> float:
        return power_at(n, effect, alpha=alpha, family_size=family_size) - power

    high = 1.0
    while gap(high) < 0:
        high *= 2
        if high > 1e6:
            return float("inf")
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-10, rtol=1e-10))


def seeds_needed(
    effect_size: float, *, alpha: float = 0.05, family_size: int = 1, power: float = 0.8, max_n: int = 100_000
) -> int:
    """Fewest paired seeds at which the paired t-test detects ``d_z = effect_size`` with probability ``power``.

    Two-sided, at ``alpha / family_size``. Raises ``ValueError`` for a zero or
    non-finite effect, or when more than ``max_n`` seeds would be needed.
    """
    _check(alpha, family_size, power)
    effect = abs(float(effect_size))
    if not np.isfinite(effect) or effect == 0:
        raise ValueError(f"`effect_size` must be finite and non-zero, got {effect_size!r}")
    low, high = 2, 2
    while power_at(high, effect, alpha=alpha, family_size=family_size) < power:
        low, high = high, high * 2
        if high > max_n:
            raise ValueError(f"d_z = {effect:g} needs more than max_n = {max_n} seeds")
    while low < high:  # power grows with n: bisect for the first n that reaches it
        mid = (low + high) // 2
        if power_at(mid, effect, alpha=alpha, family_size=family_size) >= power:
            high = mid
        else:
            low = mid + 1
    return int(math.ceil(high))


def logrank_detectable_hazard_ratio(
    events: int, *, alpha: float = 0.05, family_size: int = 1, power: float = 0.8
) -> float:
    """Hazard ratio (> 1) a two-sided log-rank test detects with probability ``power`` on ``events`` events.

    Schoenfeld's (1981) approximation for two equal groups: the test needs
    ``D = 4 (z_{1-a/2} + z_power)^2 / log(HR)^2`` events, so ``D`` events detect
    ``HR = exp(2 (z_{1-a/2} + z_power) / sqrt(D))``, at ``a = alpha / family_size``.
    ``inf`` with no events.

    Raises:
        ValueError: ``alpha`` or ``power`` is not in (0, 1), or ``family_size`` is not a positive integer.
    """
    level = _check(alpha, family_size, power)
    if events <= 0:
        return float("inf")
    z = sps.norm.ppf(1 - level / 2) + sps.norm.ppf(power)
    return float(np.exp(2 * z / np.sqrt(events)))
