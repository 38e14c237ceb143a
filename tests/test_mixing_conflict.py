"""Conflict-averse aggregation (zoedu.mixing.conflict): PCGrad and MGDA on two tasks."""

import pytest
import torch

from zoedu.mixing import (
    aggregate,
    mgda,
    pcgrad,
)


# --------------------------------------------------------------------------- PCGrad / MGDA
def test_pcgrad_matches_the_two_task_projection():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2           # Yu et al. 2020, Alg. 1: project out the conflict
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(pcgrad(torch.stack([g1, g2])), (p1 + p2) / 2)
    # no conflict: PCGrad is the plain mean
    G = torch.tensor([[1.0, 0.2], [0.5, 1.0]])
    torch.testing.assert_close(pcgrad(G), G.mean(0))
    torch.testing.assert_close(aggregate(G, "mean"), G.mean(0))


def test_mgda_is_the_min_norm_point_of_two_gradients():
    g1, g2 = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([-0.5, 1.0], dtype=torch.float64)
    alpha = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))   # Sener & Koltun 2018, Eq. 4
    alpha = min(max(alpha, 0.0), 1.0)
    expect = alpha * g1 + (1 - alpha) * g2
    got = mgda(torch.stack([g1, g2]), epsilon=1e-9, max_iters=1000)
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)
    # the min-norm point is no longer than either gradient and does not conflict with either
    assert got.norm() <= min(g1.norm(), g2.norm()) + 1e-9
    assert float(got @ g1) >= -1e-6 and float(got @ g2) >= -1e-6


@pytest.mark.parametrize("grads, method, match", [
    (torch.ones(3), "pcgrad", "matrix"),
    (torch.ones(1, 3), "mgda", "K ≥ 2"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "pcgrad", "NaN"),
    (torch.ones(2, 3), "nash", "allowed"),
])
def test_aggregate_bad_input(grads, method, match):
    with pytest.raises(ValueError, match=match):
        aggregate(grads, method)
