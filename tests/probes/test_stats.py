"""The intervals every summary quotes (probes.stats): Student's t for means, Wilson's for rates.

Each is checked against what defines it (closed forms of the t quantile; the score equation a Wilson bound
solves) and against what it is for: covering the truth 95% of the time on the few samples a run has."""

import math

import numpy as np
import pandas as pd
import pytest

from probes.stats import (
    PROBABILITY,
    Z95,
    above_chance,
    ci95_half_width,
    design_effect,
    interval95,
    mean_ci95,
    mean_interval95,
    rate_ci95,
    t_quantile,
)


def test_student_t_quantiles_match_their_closed_forms():
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)  # Cauchy
    assert t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)
    assert t_quantile(0.975, 100000) == pytest.approx(Z95, abs=1e-4)  # → the normal quantile


def test_mean_ci95_is_mean_plus_minus_t_standard_errors():
    values = pd.Series([1.0, 2.0, 3.0, 4.0])
    stats = mean_ci95(values)
    half = t_quantile(0.975, 3) * values.std() / 2
    assert stats["mean"] == 2.5 and stats["ci95"] == pytest.approx([2.5 - half, 2.5 + half]) and stats["n"] == 4
    assert ci95_half_width(values) == pytest.approx(half) and half > 1.96 * values.std() / 2 * 1.6  # t(3) = 3.18


def test_a_bounded_mean_s_interval_is_cut_to_its_range_and_keeps_its_coverage():
    """Probabilities near 1 over three seeds: t's interval reaches past 1, and the mean cannot; cut to [0, 1] it
    is t's interval otherwise, so it covers every true mean t's did. Over 4,000 draws of 3 values from a Beta
    near 1 the cut interval covers the true mean as often as the uncut one (the cut part holds no mean)."""
    values = pd.Series([0.99, 1.0, 0.9])
    half = ci95_half_width(values)
    assert values.mean() + half > 1
    assert mean_interval95(values, bounds=PROBABILITY) == pytest.approx([values.mean() - half, 1.0])
    assert mean_ci95(values, bounds=PROBABILITY)["ci95"][1] == 1.0 and interval95(values, PROBABILITY)[1] == 1.0
    assert mean_interval95(values) == pytest.approx([values.mean() - half, values.mean() + half])  # unbounded
    assert all(math.isnan(end) for end in mean_interval95(pd.Series([0.5]), bounds=PROBABILITY))
    draws = np.random.default_rng(0).beta(20, 1, size=(4000, 3))
    truth = 20 / 21
    cut = [mean_interval95(pd.Series(row), bounds=PROBABILITY) for row in draws]
    plain = [mean_interval95(pd.Series(row)) for row in draws]
    assert all(high <= 1.0 for _, high in cut) and any(high > 1.0 for _, high in plain)
    assert [low <= truth <= high for low, high in cut] == [low <= truth <= high for low, high in plain]


def test_mean_ci95_over_facts_averages_each_facts_questions_first():
    """Three questions about fact 7 and one about fact 2: the interval is over the two facts'
    means (2 and 5), not the four questions; a fact asked alone has no interval."""
    values, facts = pd.Series([1.0, 2.0, 3.0, 5.0]), pd.Series([7, 7, 7, 2])
    stats = mean_ci95(values, facts)
    half = math.tan(math.pi * 0.475) * pd.Series([2.0, 5.0]).std() / 2 ** 0.5  # t with one degree of freedom
    assert stats["mean"] == 3.5 and stats["ci95"] == pytest.approx([3.5 - half, 3.5 + half])
    assert stats["n"] == 2 and stats["questions"] == 4
    alone = mean_ci95(pd.Series([1.0, 3.0]), pd.Series([4, 4]))
    assert alone["mean"] == 2.0 and alone["n"] == 1 and all(math.isnan(end) for end in alone["ci95"])


def test_the_mean_interval_covers_the_truth_95_percent_of_the_time_on_few_samples():
    """4,000 draws of n normal samples (n = 2, 3, 5, 10: the statements traced, the facts of a fine-tune): the
    interval holds the true mean in 95% of them (1.96·s/√n held it in 70% at n = 2 and 88% at n = 5)."""
    rng = np.random.default_rng(2026)
    for n in (2, 3, 5, 10):
        draws = rng.normal(0.7, 2.0, size=(4000, n))
        covered = [abs(row.mean() - 0.7) <= ci95_half_width(pd.Series(row)) for row in draws]
        assert np.mean(covered) == pytest.approx(0.95, abs=0.012), n


def test_a_rate_interval_is_wilsons_score_interval():
    """Each end p solves the score equation (k/n − p)² = z²·p(1 − p)/n; the interval holds k/n, stays in [0, 1], and
    is not zero-wide at 0 or n successes (the normal interval of 0/1 outcomes was "0.000 ± 0.000")."""
    for n in (1, 4, 31, 1492):
        for k in sorted({0, 1, n // 3, n - 1, n}):
            outcomes = pd.Series([1.0] * k + [0.0] * (n - k))
            low, high = rate_ci95(outcomes)
            rate = k / n
            for end in (low, high):
                assert (rate - end) ** 2 == pytest.approx(Z95 ** 2 * end * (1 - end) / n, abs=1e-12)
            assert 0 <= low <= rate <= high <= 1 and high - low > 0
    assert rate_ci95(pd.Series([0.0] * 4))[1] == pytest.approx(0.4899, abs=1e-4)  # 0 of 4: up to 0.49, not 0
    for n in range(1, 201):  # none and all: the interval holds the rate exactly (its ends had landed 1 ulp past it)
        low, high = rate_ci95(pd.Series([0.0] * n))
        assert low == 0.0 < high
        low, high = rate_ci95(pd.Series([1.0] * n))
        assert low < high == 1.0
    assert rate_ci95(pd.Series([1.0, None, 0.0])) == rate_ci95(pd.Series([1.0, 0.0]))  # missing outcomes left out
    assert all(math.isnan(end) for end in rate_ci95(pd.Series([], dtype=float)))


def test_a_rate_interval_covers_a_rare_rate_and_refuses_what_is_not_a_rate():
    """20 trials of a rate of 0.05 (a top-1 rate near chance on a few facts), 4,000 times: Wilson's interval holds
    it in ≥ 93% of the draws; the normal one of the same outcomes held it in 63% (37% of the draws have no success)."""
    rng = np.random.default_rng(7)
    draws = rng.random((4000, 20)) < 0.05
    covered = [low <= 0.05 <= high for low, high in (rate_ci95(pd.Series(row.astype(float))) for row in draws)]
    assert np.mean(covered) >= 0.93
    with pytest.raises(ValueError, match="0/1 outcomes; got \\[0.5\\]"):
        rate_ci95(pd.Series([1.0, 0.5, 0.0]))


def test_clusters_widen_an_interval_by_their_design_effect_and_never_narrow_it():
    """Each outcome repeated in a cluster of two carries no more information than one copy: the design effect is 2
    and Wilson's interval is the one copy's, exactly. One value per cluster is the independent interval; clusters
    whose members disagree (negatively correlated) leave it as it is rather than narrow it."""
    once = pd.Series([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    twice = pd.Series(np.repeat(once.to_numpy(), 2))
    pairs = pd.Series(np.repeat(np.arange(len(once)), 2))
    assert design_effect(twice, pairs) == (pytest.approx(2.0), len(once))
    assert rate_ci95(twice, pairs) == pytest.approx(rate_ci95(once), abs=1e-12)
    assert rate_ci95(twice)[1] - rate_ci95(twice)[0] < rate_ci95(once)[1] - rate_ci95(once)[0]  # what it had been
    alone = pd.Series(np.arange(len(once)))
    assert rate_ci95(once, alone) == pytest.approx(rate_ci95(once), abs=1e-12)
    assert ci95_half_width(once, alone) == pytest.approx(ci95_half_width(once), abs=1e-12)
    disagreeing = pd.Series([1.0, 0.0] * 5)
    assert design_effect(disagreeing, pairs[:10]) == (1.0, 5)
    assert rate_ci95(disagreeing, pairs[:10]) == pytest.approx(rate_ci95(disagreeing), abs=1e-12)
    # a mean over clusters: t over C − 1 degrees of freedom, √ of the CR1 variance C/(C − 1)·Σ_c(Σ_{i∈c} e_i)²/n²
    values = pd.Series([0.5, 0.7, 2.0, 2.4, -1.0, -0.6])
    labels = pd.Series(["a", "a", "b", "b", "c", "c"])
    e = values - values.mean()
    variance = 3 / 2 * (e.groupby(labels).sum() ** 2).sum() / 6 ** 2
    assert ci95_half_width(values, labels) == pytest.approx(t_quantile(0.975, 2) * math.sqrt(variance))
    assert variance > 1.9 * values.var() / 6  # the two values of a cluster are nearly equal


def test_clusters_whose_design_effect_cannot_be_estimated_count_once_each():
    """Every outcome the same leaves no residual to estimate the design effect from, yet a rate of 0 or 1 is where
    Wilson's interval is read: pairs asked twice with the same outcome give the interval of the pairs, not of the
    questions (it had given the questions': 0.510 of 4 against 0.342 of 2 at the lower end). One cluster counts as
    one value too."""
    asked_twice = pd.Series(["a", "a", "b", "b", "c", "c"])
    for outcome in (0.0, 1.0):
        twice, once = pd.Series([outcome] * 6), pd.Series([outcome] * 3)
        assert design_effect(twice, asked_twice) == (2.0, 3)
        assert rate_ci95(twice, asked_twice) == pytest.approx(rate_ci95(once), abs=1e-12)
        assert rate_ci95(twice)[1] - rate_ci95(twice)[0] < rate_ci95(once)[1] - rate_ci95(once)[0]
    uneven = pd.Series(["a", "a", "a", "b"])
    assert design_effect(pd.Series([0.0] * 4), uneven) == (2.0, 2)  # n/C: the two clusters, one value each
    assert design_effect(pd.Series([1.0, 0.0, 1.0]), pd.Series(["a"] * 3)) == (3.0, 1)
    low, high = rate_ci95(pd.Series([1.0, 0.0, 1.0]), pd.Series(["a"] * 3))
    z2 = Z95 ** 2  # Wilson's interval of a rate of 2/3 over one value
    centre, half = (2 / 3 + z2 / 2) / (1 + z2), Z95 * math.sqrt(2 / 9 + z2 / 4) / (1 + z2)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert design_effect(pd.Series([1.0, None, 1.0, 1.0]), pd.Series(["a", "a", "b", "b"])) == (1.5, 2)  # missing left out


def test_no_values_give_no_interval_and_no_warning():
    """A split no statement falls in (`check-asymmetry --limit 2` on SmolLM2: no pair of one kind) has no mean: its
    intervals are [NaN, NaN] (a mean's and a rate's), its design effect 1 over no cluster, and none of it
    may print numpy's "Mean of empty slice" to a `--quiet` command's standard error (it did, eight lines a run)."""
    import warnings

    for empty in (pd.Series([], dtype=float), pd.Series([None, None], dtype=float)):
        clusters = pd.Series(["a"] * len(empty))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert design_effect(empty, clusters) == (1.0, 0)
            assert all(math.isnan(end) for end in mean_interval95(empty, clusters))
            assert math.isnan(ci95_half_width(empty, clusters)) and math.isnan(ci95_half_width(empty))
            assert all(math.isnan(end) for end in rate_ci95(empty, clusters))


def test_a_clustered_mean_s_interval_has_cr1_s_small_sample_factor():
    """Two clusters of four, 0 0 0 0 | 2 2 2 2: residuals ∓1, cluster sums ∓4, Σ_c(Σe)²/n² = 32/64 = 1/2, and with
    C/(C − 1) = 2 the variance is 1: the half width is t₀.₉₇₅(1) exactly (it was t₀.₉₇₅(1)·√(8/7 · 4/8), 24% less:
    the factor was missing). Three clusters 1 3 | 5 5 | 8 8: mean 5, cluster sums −6, 0, 6, variance 3/2 · 72/36 = 3.
    With clusters of one size that is the t interval over the cluster means, t₀.₉₇₅(C − 1)·s_c/√C, what the
    interval of C independent clusters is; with one value per cluster, the unclustered interval."""
    halves = pd.Series([0.0] * 4 + [2.0] * 4)
    assert ci95_half_width(halves, pd.Series(["a"] * 4 + ["b"] * 4)) == t_quantile(0.975, 1)
    values, labels = pd.Series([1.0, 3.0, 5.0, 5.0, 8.0, 8.0]), pd.Series(["a", "a", "b", "b", "c", "c"])
    assert ci95_half_width(values, labels) == t_quantile(0.975, 2) * math.sqrt(3.0)
    assert mean_interval95(values, labels) == [5.0 - t_quantile(0.975, 2) * math.sqrt(3.0),
                                               5.0 + t_quantile(0.975, 2) * math.sqrt(3.0)]
    rng = np.random.default_rng(3)
    for clusters in (2, 3, 5):
        labels = pd.Series(np.repeat(np.arange(clusters), 4))
        values = pd.Series(np.repeat(rng.normal(0, 2.0, clusters), 4) + rng.normal(0, 0.1, 4 * clusters))
        means = values.groupby(labels).mean()
        assert ci95_half_width(values, labels) == pytest.approx(ci95_half_width(means), rel=1e-12)
        alone = pd.Series(np.arange(len(values)))
        assert ci95_half_width(values, alone) == pytest.approx(ci95_half_width(values), rel=1e-12)


def test_a_success_never_lowers_a_clustered_rate_s_upper_end():
    """10 clusters of 4 outcomes. No success has no design effect to estimate: each cluster counts once, [0, z²/(10 +
    z²)] = [0, 0.278]. One success alone in its cluster reads as clusters that disagree (deff 1): Wilson's interval
    of 1 of 40 ended at 0.129, below none's, as if a success made a high rate less likely. Its upper end is none's
    now, and its lower end Wilson's; all and all but one success likewise at the lower end, 10/(10 + z²). Adding
    successes one cluster after another, no upper end falls below none's and no lower end rises above all's."""
    labels, z2 = pd.Series(np.repeat(np.arange(10), 4)), Z95 ** 2
    none, one = pd.Series([0.0] * 40), pd.Series([1.0] + [0.0] * 39)
    assert rate_ci95(none, labels) == pytest.approx([0.0, z2 / (10 + z2)], abs=1e-12)
    assert design_effect(one, labels)[0] == 1.0 and rate_ci95(one)[1] < 0.13
    assert rate_ci95(one, labels) == [rate_ci95(one)[0], z2 / (10 + z2)]
    assert rate_ci95(1 - one, labels) == [10 / (10 + z2), rate_ci95(1 - one)[1]]
    assert rate_ci95(1 - none, labels) == pytest.approx([10 / (10 + z2), 1.0], abs=1e-12)
    spread = [cluster * 4 + member for member in range(4) for cluster in range(10)]
    for successes in range(41):
        outcomes = np.zeros(40)
        outcomes[spread[:successes]] = 1.0
        low, high = rate_ci95(pd.Series(outcomes), labels)
        assert high >= z2 / (10 + z2) and low <= 10 / (10 + z2) and low <= successes / 40 <= high


def test_above_chance_is_the_exact_one_sided_binomial_test():
    """P(X ≥ k) for X ~ Binomial(n, p) against 5%: at n = 60, p = 1/400, P(X ≥ 1) = 1 − (399/400)⁶⁰ = 0.139 and
    P(X ≥ 2) = 0.0096; at n = 10, p = 1/2, P(X ≥ 9) = 11/1024 = 0.0107 and P(X ≥ 8) = 56/1024 = 0.0547."""
    assert not above_chance(0, 60, 1 / 400) and not above_chance(1, 60, 1 / 400) and above_chance(2, 60, 1 / 400)
    assert above_chance(9, 10, 0.5) and not above_chance(8, 10, 0.5)
    assert above_chance(8, 10, 0.5, level=0.06)  # 0.0547 < 0.06
    # thousands of trials (identity-bridge over many seeds): C(n, i) pⁱ had overflowed a float past n ≈ 1030
    assert not above_chance(9, 2000, 1 / 400) and above_chance(11, 2000, 1 / 400)  # mean 5: P(X ≥ 9) 0.068, ≥ 11 0.014
    assert not above_chance(1030, 2000, 0.5) and above_chance(1050, 2000, 0.5)  # P(X ≥ 1030) 0.094, ≥ 1050 0.015
    for bad in ((3, 2, 0.5), (-1, 2, 0.5), (1, 2, 0.0), (1, 2, 1.0)):
        with pytest.raises(ValueError, match="above_chance needs"):
            above_chance(*bad)
