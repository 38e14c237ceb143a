"""Mixing samplers (zoedu.mixing.samplers): apportioning, uniform, proportional, static, round-robin."""

import numpy as np
import pytest

from zoedu.mixing import (
    Proportional,
    RandomTask,
    RoundRobin,
    Static,
    Uniform,
    apportion,
)


# --------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("b", [1, 7, 16, 33])
def test_apportion_sums_to_b_and_is_close_to_the_shares(b):
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.dirichlet(np.ones(5))
        for r in (None, rng):
            c = apportion(w, b, rng=r)
            assert c.sum() == b and np.all(c >= 0)
            assert np.all(np.abs(c - b * w) < 1 + 1e-9)


def test_apportion_with_a_generator_is_unbiased():
    w = np.array([0.02, 0.18, 0.8])
    rng = np.random.default_rng(1)
    mean = np.mean([apportion(w, 10, rng=rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, 10 * w, atol=0.04)
    assert apportion(w, 10)[0] == 0        # deterministic rounding never gives the 0.2 share


def test_uniform_counts_are_equal_and_remainders_rotate():
    s = Uniform(4)
    np.testing.assert_array_equal(s.counts(16), [4, 4, 4, 4])
    total = sum(s.counts(10, step=t) for t in range(4))
    np.testing.assert_array_equal(total, [10, 10, 10, 10])
    assert all(s.counts(10, step=t).sum() == 10 for t in range(7))


def test_proportional_follows_sizes_and_temperature():
    s = Proportional([100, 300, 600])
    np.testing.assert_allclose(s.weights, [0.1, 0.3, 0.6])
    np.testing.assert_array_equal(s.counts(10), [1, 3, 6])
    hot = Proportional([100, 300, 600], temperature=2.0)
    w = np.sqrt([100, 300, 600])
    np.testing.assert_allclose(hot.weights, w / w.sum())
    np.testing.assert_allclose(Proportional([100, 300, 600], temperature=1e6).weights, 1 / 3, atol=1e-4)


def test_static_round_robin_and_random_task():
    np.testing.assert_array_equal(Static([0.5, 0.25, 0.25]).counts(8), [4, 2, 2])
    rr = RoundRobin(3)
    assert [int(np.argmax(rr.counts(5, step=t))) for t in range(6)] == [0, 1, 2, 0, 1, 2]
    assert all(rr.counts(5, step=t).max() == 5 for t in range(3))
    rt = RandomTask(2, weights=[0.8, 0.2])
    rng = np.random.default_rng(0)
    picks = [rt.task(rng=rng) for _ in range(2000)]
    assert abs(np.mean(picks) - 0.2) < 0.03
    c = rt.counts(6, rng=rng)
    assert c.sum() == 6 and c.max() == 6


@pytest.mark.parametrize("call, match", [
    (lambda: Uniform(1), "n_tasks"),
    (lambda: Static([0.5, 0.6]), "sum to 1"),
    (lambda: Static([1.5, -0.5]), r"\[0, 1\]"),
    (lambda: Static([1.0]), "at least 2"),
    (lambda: Proportional([10, -1]), "sizes"),
    (lambda: Proportional([10, 20], temperature=0), "temperature"),
    (lambda: Uniform(4).counts(3, require_all=True), "b=3"),
    (lambda: apportion([0.5, 0.5], 0), "b=0"),
    (lambda: RoundRobin(2).counts(4, require_all=True), "require_all"),
    (lambda: RandomTask(2).task(), "rng"),
])
def test_sampler_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
