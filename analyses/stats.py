"""The one interval every summary quotes: a normal-approximation 95% interval of a mean."""

from __future__ import annotations

import math

import pandas as pd


def ci95_half_width(values: pd.Series) -> float:
    """1.96·sd/√n over the non-missing values (NaN for fewer than two)."""
    n = int(values.count())
    return 1.96 * float(values.std()) / math.sqrt(n) if n > 1 else float("nan")
