import numpy as np
import pytest

from compfair_tasks import stats


def test_bootstrap_ci_of_a_constant_is_the_constant():
    assert stats.bootstrap_ci([2.0] * 20) == (2.0, 2.0)


def test_bootstrap_stderr_of_the_mean_matches_the_formula():
    values = np.random.default_rng(1).normal(size=400)
    analytic = values.std(ddof=1) / np.sqrt(len(values))
    assert stats.bootstrap_stderr(values, n_resamples=4000) == pytest.approx(analytic, rel=0.1)


def test_bootstrap_resamples_whole_items_for_custom_statistics():
    items = [{"won": 1}, {"won": 0}, {"won": 1}, {"won": 1}]
    low, high = stats.bootstrap_ci(items, statistic=lambda sample: 100 * np.mean([i["won"] for i in sample]))
    assert 0 <= low <= 75 <= high <= 100


def test_paired_tests_on_identical_scores_find_nothing():
    a = [0.1, 0.5, 0.9, 0.3]
    assert stats.paired_bootstrap_test(a, a)["p_value"] == 1.0
    assert stats.paired_permutation_test(a, a)["p_value"] == 1.0


def test_paired_tests_find_a_consistent_shift():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=60)
    b = a + 0.2 + rng.normal(scale=0.01, size=60)
    boot = stats.paired_bootstrap_test(a, b)
    perm = stats.paired_permutation_test(a, b, n_resamples=2000)
    assert boot["effect"] == pytest.approx(np.mean(b - a))
    assert boot["ci_low"] > 0.15 and boot["p_value"] < 0.01
    assert perm["p_value"] == pytest.approx(1 / 2001)


def test_paired_tests_reject_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_permutation_test([1, 2], [1, 2, 3])
