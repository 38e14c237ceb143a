"""Privacy accounting (zoedu.privacy.accounting): equal to Opacus's accountants, calibration inverts ε."""

import math

import pytest

from zoedu.privacy import (
    PrivacyAccountant,
    epsilon,
    gaussian_noise_multiplier,
    noise_for_epsilon,
)


# --------------------------------------------------------------------------- accounting
def test_accountant_equals_opacus_for_the_same_history():
    from opacus.accountants import PRVAccountant, RDPAccountant

    ours, theirs = PrivacyAccountant("rdp"), RDPAccountant()
    steps = [(1.1, 0.02)] * 30 + [(0.8, 0.05)] * 10 + [(1.1, 0.02)] * 5
    for sigma, q in steps:
        ours.step(sigma, q)
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.history == theirs.history
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(delta=1e-5), rel=1e-12)
    assert ours.steps == 45
    # the one-shot function agrees with an Opacus accountant holding the same history
    ref = RDPAccountant()
    ref.history = [(1.3, 0.01, 200)]
    assert epsilon(1.3, 0.01, 200, 1e-6) == pytest.approx(ref.get_epsilon(delta=1e-6), rel=1e-12)
    prv, ours_prv = PRVAccountant(), PrivacyAccountant("prv")
    prv.history = [(1.5, 0.02, 20)]
    for _ in range(20):
        ours_prv.step(1.5, 0.02)
    assert ours_prv.epsilon(1e-5) == pytest.approx(prv.get_epsilon(delta=1e-5), rel=1e-9)
    # ε grows with the number of steps and is 0 before any
    assert PrivacyAccountant().epsilon(1e-5) == 0.0
    assert epsilon(1.0, 0.05, 10, 1e-5) < epsilon(1.0, 0.05, 100, 1e-5)
    assert epsilon(0.0, 0.05, 10, 1e-5) == math.inf


@pytest.mark.parametrize("target,q,steps,accountant", [(1.0, 0.05, 200, "rdp"), (0.5, 1.0, 1, "rdp")])
def test_noise_for_epsilon_inverts_epsilon(target, q, steps, accountant):
    sigma = noise_for_epsilon(target, q, steps, 1e-5, accountant)
    eps = epsilon(sigma, q, steps, 1e-5, accountant)
    assert target - 0.011 <= eps <= target + 1e-9
    # a little less noise overshoots the target: σ is (near) the smallest that works
    assert epsilon(sigma * 0.97, q, steps, 1e-5, accountant) > target - 0.011


def test_gaussian_mechanism_calibration_is_exact_and_tighter_than_rdp():
    from scipy.stats import norm

    for eps, delta in [(1.0, 1e-5), (0.3, 1e-3), (8.0, 1e-6)]:
        s = gaussian_noise_multiplier(eps, delta)
        # Balle & Wang (2018), Theorem 8: δ(ε) of the Gaussian mechanism with std σ·Δ
        d = norm.cdf(1 / (2 * s) - eps * s) - math.exp(eps) * norm.cdf(-1 / (2 * s) - eps * s)
        assert d == pytest.approx(delta, rel=1e-6)
        assert s <= gaussian_noise_multiplier(eps, delta, accountant="rdp")
