"""The intervals the summaries quote.

* :func:`ci95_half_width`: the normal-approximation 95% interval of a mean, 1.96·sd/√n, for
  the many-sample means of one run (hundreds of facts or questions); :func:`mean_ci95` the same over
  facts, each fact's questions averaged first;
* :func:`t_ci95_half_width`: Student's t interval, t₀.₉₇₅(n − 1)·sd/√n, for the few-sample means
  a sweep takes across seeds (with 5 seeds the normal interval would be 29% too narrow).
"""

from __future__ import annotations

import math
from functools import lru_cache

import pandas as pd


def ci95_half_width(values: pd.Series) -> float:
    """1.96·sd/√n over the non-missing values (NaN for fewer than two)."""
    n = int(values.count())
    return 1.96 * float(values.std()) / math.sqrt(n) if n > 1 else float("nan")


def mean_ci95(values: pd.Series, facts: pd.Series | None = None) -> dict[str, float]:
    """Mean and normal-approximation 95% interval, mean ± 1.96·sd/√n.

    With ``facts`` (the fact each value is about), the values are first averaged per fact and
    the interval is over the n facts: the several paraphrases that ask one fact are not
    independent samples (a learnt fact tends to be learnt in every wording), so counting each
    question as one would narrow the interval by up to √(questions per fact). ``questions``:
    the values averaged."""
    units = values if facts is None else values.groupby(facts.to_numpy(), sort=False).mean()
    mean, half = float(units.mean()), ci95_half_width(units)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(units.count()),
            "questions": int(values.count())}


def t_cdf(x: float, df: int) -> float:
    """P(T ≤ x) for Student's t with ``df`` degrees of freedom: ½ + ∫₀ˣ f(t) dt with the density
    f(t) = Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + t²/ν)^(−(ν+1)/2), integrated by Simpson's rule on
    4000 intervals (error < 1e-9 for the |x| < 100 an interval needs)."""
    nu = float(df)
    log_norm = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (nu + 1) / 2 * math.log1p(t * t / nu))

    n, h = 4000, abs(x) / 4000
    total = density(0.0) + density(abs(x)) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    half = total * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half


@lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (``p`` in (½, 1)), by bisection on :func:`t_cdf`."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def t_ci95_half_width(values: pd.Series) -> float:
    """t₀.₉₇₅(n − 1)·sd/√n over the non-missing values (NaN for fewer than two); sd is the sample
    standard deviation (n − 1 in the denominator)."""
    n = int(values.count())
    return t_quantile(0.975, n - 1) * float(values.std()) / math.sqrt(n) if n > 1 else float("nan")
