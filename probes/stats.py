"""The 95% intervals every summary quotes.

* :func:`ci95_half_width`: Student's t interval of a mean, t₀.₉₇₅(n − 1)·s/√n, with s the sample standard
  deviation. Exact for normal samples at any n, and the normal interval 1.96·s/√n in the limit (at n = 1,000 the
  two differ by 0.1%); at the few samples a run often has (facts of a fine-tune, statements traced, seeds of a
  sweep) the normal one is too narrow: by a factor 1.15 at 10, 1.62 at 4 and 6.5 at 2.
  :func:`mean_ci95` is the same over facts, each fact's questions averaged first.
* :func:`above_chance`: the exact one-sided binomial test of k successes in n trials against a chance rate.
* :func:`share_of_gap`: the share of a gap recovered (activation patching), undefined where the gap is rounding.
* :func:`rate_ci95`: Wilson's score interval of a rate of k successes in n trials, the p with
  (k/n − p)² ≤ z²·p(1 − p)/n: never empty, never outside [0, 1], and not zero-wide at a rate of 0 or 1, where
  the t (or normal) interval of 0/1 outcomes has s = 0 and would claim certainty ("0.000 ± 0.000" of 4 pairs).

Samples that come in clusters (a celebrity's mother and father asked with the same child's name) are not
independent either. With ``clusters``, both intervals widen, never narrow: the t interval by the cluster-robust
variance with its small-sample factor C/(C − 1) (:func:`cluster_robust_variance`), Wilson's by the clusters' design
effect (:func:`design_effect`); a mean over facts whose paraphrases should count once is :func:`mean_ci95`'s
``facts`` instead.

Probes and analyses both read these (causal tracing averages over statements), so they live below both.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
"""The standard normal's 0.975 quantile."""
UNBOUNDED = (-math.inf, math.inf)
PROBABILITY = (0.0, 1.0)
"""The range of a probability, an accuracy or a rate, and so of their means."""


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


def t95(n: int) -> float:
    """t₀.₉₇₅(n − 1), the factor of s/√n in a 95% interval of the mean of n samples (NaN for n < 2)."""
    return t_quantile(0.975, int(n) - 1) if n > 1 else float("nan")


def design_effect(values: pd.Series, clusters: pd.Series) -> tuple[float, int]:
    """(deff, C): how much the clusters inflate the variance of the mean of ``values``, and their number.

    With residuals e_i = y_i − ȳ, deff = Σ_c (Σ_{i∈c} e_i)² / Σ_i e_i²: the cluster-robust variance of ȳ over the
    independent one (1 when every cluster holds one value; k when each value is repeated k times in its
    cluster), floored at 1 so that clusters never narrow an interval. Missing values are left out. Where it cannot
    be estimated (every value the same, so no residual; or one cluster, whose residuals sum to 0) it is n/C: each
    cluster counts as one value, what clusters whose members agree are worth (a rate of 0 over pairs asked twice
    is a rate of 0 over the pairs)."""
    residual, within = _residuals_by_cluster(values, clusters)
    total, count = float((residual ** 2).sum()), int(len(within))
    if total == 0 or count < 2:
        return max(1.0, len(residual) / count) if count else 1.0, count
    return max(1.0, float((within ** 2).sum()) / total), count


def _residuals_by_cluster(values: pd.Series, clusters: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """(e, Σ_{i∈c} e_i for each cluster c): the residuals e_i = y_i − ȳ of the non-missing ``values`` and their sums
    within each cluster, clusters in their first-seen order; both empty where no value is there (no mean to take)."""
    keep = values.notna().to_numpy()
    y = values[keep].astype(float).to_numpy()
    if not len(y):
        return y, pd.Series(dtype=float)
    residual = y - y.mean()
    return residual, pd.Series(residual).groupby(clusters[keep].to_numpy(), sort=False).sum()


def cluster_robust_variance(values: pd.Series, clusters: pd.Series) -> tuple[float, int]:
    """(V, C): the cluster-robust (CR1) variance of the mean of the non-missing ``values`` over their C clusters,
    V = C/(C − 1) · Σ_c (Σ_{i∈c} e_i)² / n², e_i = y_i − ȳ (NaN for fewer than two clusters). Σ_c(Σe)²/n² alone (CR0)
    is biased low with few clusters (its expectation for C independent cluster means is (C − 1)/C of their
    variance: half at 2 clusters); C/(C − 1) is the usual correction (Stata's and sandwich's CR1 for a mean, whose
    (n − 1)/(n − k) factor is 1 at k = 1), and with one value per cluster V is s²/n exactly, the unclustered
    variance of the mean."""
    residual, within = _residuals_by_cluster(values, clusters)
    count = int(len(within))
    if count < 2:
        return float("nan"), count
    return count / (count - 1) * float((within ** 2).sum()) / len(residual) ** 2, count


def ci95_half_width(values: pd.Series, clusters: pd.Series | None = None) -> float:
    """t₀.₉₇₅(n − 1)·s/√n over the n non-missing values, s their sample standard deviation (n − 1 in its
    denominator); NaN for fewer than two. With ``clusters`` (one label per value): t₀.₉₇₅(C − 1)·√max(s²/n, V)
    over the C clusters, V their CR1 variance of the mean (:func:`cluster_robust_variance`), never below the
    unclustered s²/n (clusters whose members disagree do not narrow it); NaN for fewer than two clusters."""
    n = int(values.count())
    if clusters is None:
        return t95(n) * float(values.std()) / math.sqrt(n) if n > 1 else float("nan")
    variance, count = cluster_robust_variance(values, clusters)
    return t95(count) * math.sqrt(max(float(values.var()) / n, variance)) if count > 1 else float("nan")


def mean_interval95(values: pd.Series, clusters: pd.Series | None = None,
                    bounds: tuple[float, float] = UNBOUNDED) -> list[float]:
    """[low, high]: mean ± :func:`ci95_half_width` (with its ``clusters``), cut to the ``bounds`` the values can
    take ([NaN, NaN] where the half width is undefined). A mean of probabilities lies in [0, 1], and so does the
    true mean the interval is for: cutting off the impossible part (t's "1.007" over three seeds near 1) keeps
    every true value the interval held, so its coverage is unchanged."""
    mean, half = float(values.mean()), ci95_half_width(values, clusters)
    if math.isnan(half):
        return [math.nan, math.nan]
    return [max(bounds[0], mean - half), min(bounds[1], mean + half)]


def mean_ci95(values: pd.Series, facts: pd.Series | None = None,
              bounds: tuple[float, float] = UNBOUNDED) -> dict[str, float]:
    """Mean and its 95% interval, mean ± t₀.₉₇₅(n − 1)·s/√n cut to ``bounds`` (:func:`mean_interval95`).

    With ``facts`` (the fact each value is about), the values are first averaged per fact and
    the interval is over the n facts: the several paraphrases that ask one fact are not
    independent samples (a learnt fact tends to be learnt in every wording), so counting each
    question as one would narrow the interval by up to √(questions per fact). ``questions``:
    the values averaged."""
    units = values if facts is None else values.groupby(facts.to_numpy(), sort=False).mean()
    return {"mean": float(units.mean()), "ci95": mean_interval95(units, bounds=bounds), "n": int(units.count()),
            "questions": int(values.count())}


def rate_ci95(outcomes: pd.Series, clusters: pd.Series | None = None) -> list[float]:
    """Wilson's 95% score interval [low, high] of the rate of the non-missing 0/1 ``outcomes`` (k of n):
    (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n), p̂ = k/n, z = :data:`Z95`; [NaN, NaN] for none.
    With ``clusters`` (one label per outcome), n is the effective sample size n/deff (:func:`design_effect`):
    outcomes repeated k times each give the interval of one copy. The design effect is estimated from the outcomes
    but has no estimate at none or all successes, where each of the C clusters counts once ([0, z²/(C + z²)] at
    none): one success alone in its cluster reads as clusters that disagree (deff 1), and had given a lower upper
    end than none (10 clusters of 4: 0.129 at 1 success, 0.278 at 0). So that a success never lowers the rates the
    interval allows, its upper end is at least none's z²/(C + z²), its lower end at most all's C/(C + z²).
    Outcomes other than 0 and 1 are refused: a mean of anything else is not a rate."""
    values = outcomes.dropna().astype(float)
    if not values.isin((0.0, 1.0)).all():
        raise ValueError(f"a rate's interval needs 0/1 outcomes; got {sorted(set(values) - {0.0, 1.0})[:3]}")
    n: float = len(values)
    if n == 0:
        return [float("nan"), float("nan")]
    rate, z2 = float(values.mean()), Z95 * Z95
    lowest_high, highest_low = 0.0, 1.0  # unclustered, Wilson's ends rise with the successes already
    if clusters is not None:
        deff, count = design_effect(outcomes, clusters)
        n /= deff
        lowest_high, highest_low = z2 / (count + z2), count / (count + z2)  # none's upper end, all's lower end
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # in exact arithmetic low ≤ p̂ ≤ high, and low = 0 at k = 0, high = 1 at k = n; in floating point the ends can
    # land an ulp past the rate (5.6e-17 above a rate of 0), and an error bar from the rate to them is negative
    return [max(0.0, min(rate, centre - half, highest_low)), min(1.0, max(rate, centre + half, lowest_high))]


def above_chance(successes: int, n: int, chance: float, level: float = 0.05) -> bool:
    """Whether ``successes`` of ``n`` trials are more than chance gives: the one-sided exact binomial test,
    P(X ≥ successes | X ~ Binomial(n, chance)) = Σ_{i ≥ successes} C(n, i) pⁱ (1 − p)ⁿ⁻ⁱ < ``level``, each term
    taken through its logarithm (lgamma), so that no n overflows a float. Exact at any n (where Wilson's
    interval, an approximation, calls 1 of 60 at a chance of 1/400 above it: 14% of models at chance do that
    well)."""
    if not 0 <= successes <= n or not 0 < chance < 1:
        raise ValueError(f"above_chance needs 0 ≤ successes ≤ n and a chance in (0, 1), got {successes} of {n} at "
                         f"{chance}")
    log_p, log_q, log_n = math.log(chance), math.log1p(-chance), math.lgamma(n + 1)
    tail = sum(math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
               for i in range(successes, n + 1))
    return tail < level


FLOAT32_ROUNDING = 100 * float(np.finfo(np.float32).eps)
"""What float32 rounding may move a number by, relative to the size of what it was computed from (1.2e-5)."""


def share_of_gap(value, start: float, end: float):
    """(value − start) / (end − start): how much of the way from ``start`` to ``end`` ``value`` went (a patched
    run's metric between the corrupted and the clean run's). NaN where the two ends differ by no more than
    float32 rounding, |end − start| ≤ :data:`FLOAT32_ROUNDING`·(1 + |start| + |end|): there the share is rounding
    noise over rounding noise (±10⁵ at a gap of 1e-7), no share of anything. (A half-precision model's ends are
    noisier than that; their shares are only as good as its rounding.) For ends on a log scale or of the size
    their values are, such as mean log-probabilities; not for probabilities, whose float32 rounding is relative
    (causal tracing's p 1e-7 against 1e-6 is a real gap). ``value``: a number, array or tensor."""
    gap = end - start
    if abs(gap) <= FLOAT32_ROUNDING * (1 + abs(start) + abs(end)):
        return (value - start) * math.nan
    return (value - start) / gap


def interval95(values: pd.Series, bounds: tuple[float, float] = UNBOUNDED) -> list[float]:
    """[low, high] of the non-missing ``values``: Wilson's (:func:`rate_ci95`) where every one is a yes/no (a
    ``bool``: a verdict, whose share is a rate), else Student's t around their mean cut to the ``bounds`` they can
    take (:func:`mean_interval95`)."""
    present = values.dropna()
    if len(present) and all(isinstance(value, (bool, np.bool_)) for value in present):
        return rate_ci95(present.astype(float))
    return mean_interval95(values.astype(float), bounds=bounds)
