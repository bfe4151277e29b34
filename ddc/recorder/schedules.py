"""When a quantity is recorded: schedules are functions ``step -> bool``."""

from __future__ import annotations

import math
from typing import Callable, Union

Schedule = Callable[[int], bool]

__all__ = ["Schedule", "as_schedule", "every", "logarithmic", "never"]


def every(k: int, start: int = 0) -> Schedule:
    """Steps ``start, start + k, start + 2k, ...``; ``k = 0`` never.

    Raises:
        ValueError: ``k`` is not a non-negative int.
    """
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"every: k={k!r} must be a non-negative int (0 = never)")
    return (lambda step: step >= start and (step - start) % k == 0) if k else never


def never(step: int) -> bool:
    """The schedule of nothing: False for every step.

    Raises:
        Nothing.
    """
    return False


def logarithmic(base: float = 2.0, dense_until: int = 10) -> Schedule:
    """Every step up to ``dense_until``, then the steps nearest to powers of ``base``.

    Raises:
        ValueError: ``base`` is not above 1.
    """
    if base <= 1:
        raise ValueError(f"logarithmic: base={base!r} must be > 1")

    def schedule(step: int) -> bool:
        if step <= dense_until:
            return True
        exponent = round(math.log(step, base))
        return step == round(base**exponent)

    return schedule


def as_schedule(value: Union[int, Schedule, None]) -> Schedule:
    """A schedule from ``None`` (never), an int ``k`` (:func:`every`) or a ``step -> bool`` function.

    Raises:
        ValueError: an int below 0 (see :func:`every`).
    """
    if value is None:
        return never
    if callable(value):
        return value
    return every(value)
