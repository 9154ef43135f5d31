"""Integer arithmetic of the market: the one rounding rule, and exact integer arrays."""
from __future__ import annotations

import numpy as np

INT64_MAX = 2**63 - 1


def div_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, ties to the even one (no bias)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(numerator, denominator)  # remainder >= 0 in Python
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        quotient += 1
    return quotient


def int_array(values: list[int]) -> np.ndarray:
    """An exact numpy column of Python ints: int64 if every value fits, else the ints themselves
    (object dtype, which numpy sorts, compares and adds with Python's arbitrary precision)."""
    try:
        return np.fromiter(values, np.int64, len(values))
    except OverflowError:
        return np.array(values, dtype=object)


def exact_cumsum(values: np.ndarray) -> np.ndarray:
    """Running totals of an `int_array` column that never overflow (Python ints if they could)."""
    if values.dtype != object and len(values) and max(
            -int(values.min()), int(values.max())) > INT64_MAX // len(values):
        values = values.astype(object)
    return np.cumsum(values)
