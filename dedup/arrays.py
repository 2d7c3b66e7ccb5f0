"""Set operations on integer arrays, by sorting.

numpy 2.4's ``np.unique`` hashes, which measured an order of magnitude
slower than sorting on the arrays this project handles. These helpers sort
(stable, so "first occurrence" keeps its meaning) and compare neighbours.
"""

from __future__ import annotations

import numpy as np


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values."""
    values = np.sort(values)
    if values.size < 2:
        return values
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def first_index(values: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct value."""
    if values.size == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    start = np.ones(values.size, dtype=bool)
    start[1:] = ordered[1:] != ordered[:-1]
    return order[start]


def last_mask(values: np.ndarray) -> np.ndarray:
    """Mask of the last occurrence of each distinct value."""
    mask = np.zeros(values.size, dtype=bool)
    n = values.size
    mask[n - 1 - first_index(values[::-1])] = True
    return mask


def member(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of the ``values`` found in ``keys`` (``np.isin`` by sorting)."""
    keys = unique(keys)
    if keys.size == 0 or values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, values), keys.size - 1)
    return keys[pos] == values
