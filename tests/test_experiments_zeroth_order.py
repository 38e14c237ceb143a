"""The zeroth-order experiments of notebook 01 drive the real MeZO and match the theory."""

import numpy as np
import pytest

from zoedu.experiments import zeroth_order as zo


def test_spsa_2d_is_the_projected_gradient_times_the_redrawn_direction():
    out = zo.spsa_2d("bowl", (1.0, 0.5), eps=1e-2, n=3, seed=1)
    g = out["true_gradient"]
    np.testing.assert_allclose(g, [1.0 + 0.3, 0.6 + 2.0])
    # central differences are exact on a quadratic: g_j = z_j · ∇L (up to float32 rounding)
    np.testing.assert_allclose(out["projected_grads"], out["directions"] @ g, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["estimate"], (out["projected_grads"][:, None] * out["directions"]).mean(0))
    # same seed, same estimate; many directions point along the gradient
    np.testing.assert_array_equal(out["estimate"], zo.spsa_2d("bowl", (1.0, 0.5), eps=1e-2, n=3, seed=1)["estimate"])
    many = zo.spsa_2d("bowl", (1.0, 0.5), eps=1e-2, n=400, seed=0)["estimate"]
    assert many @ g / (np.linalg.norm(many) * np.linalg.norm(g)) > 0.95
    with pytest.raises(ValueError, match="name='nope'"):
        zo.spsa_2d("nope", (0, 0))
    with pytest.raises(ValueError, match="n=0"):
        zo.spsa_2d("bowl", (0, 0), n=0)
    with pytest.raises(ValueError, match="point"):
        zo.spsa_2d("bowl", (0, 0, 0))


def test_variance_grows_with_dimension_as_lemma_2_says():
    df = zo.variance_vs_dimension((4, 400), (1, 8), trials=60, distribution="sphere", seed=0)
    assert list(df.columns[:3]) == ["d", "n", "measured"]
    np.testing.assert_allclose(df["theory"], [(4 + 1 - 1) / 1, (4 + 8 - 1) / 8, 400, (400 + 7) / 8])
    # within 5 standard errors of the law, and clearly growing with d
    assert (np.abs(df["measured"] - df["theory"]) < 5 * df["stderr"] + 0.05 * df["theory"]).all()
    big, small = df[(df.d == 400) & (df.n == 1)].measured.item(), df[(df.d == 4) & (df.n == 1)].measured.item()
    assert big > 20 * small
    with pytest.raises(ValueError, match="distribution"):
        zo.variance_vs_dimension((4,), 1, distribution="uniform")
    with pytest.raises(ValueError, match="trials"):
        zo.variance_vs_dimension((4,), 1, trials=1)


def test_mezo_accuracy_is_a_fit_method(tokenizer):
    from zoedu.models import load_model
    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("sentiment", tokenizer=tokenizer, n_train=64, n_validation=16, max_length=32)
    model, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    h = fit(model, task, "mezo-accuracy", steps=3, lr=1e-3, batch_size=32, eps=1e-1, quiet=True,
            track_memory=False, device="cpu")
    assert {"train_accuracy", "projected_grad"} <= set(h.columns)
    np.testing.assert_allclose(h["loss"], -h["train_accuracy"])
    assert ((h["train_accuracy"] >= 0) & (h["train_accuracy"] <= 1)).all()
    assert h["backward_passes"].iloc[-1] == 0 and h["forward_passes"].iloc[-1] == 6
    moved = any(not np.array_equal(a.numpy(), b.detach().numpy()) for a, b in zip(before, model.parameters()))
    assert moved == bool((h["projected_grad"] != 0).any())
    lm = load_task("multidomain", tokenizer=tokenizer, n_train=4, n_validation=2, max_length=16)
    with pytest.raises(ValueError, match="classification"):
        fit(load_model("tiny-opt", size="1m")[0], lm, "mezo-accuracy", steps=1, lr=1e-3, quiet=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mezo_on_accuracy_alone_improves_a_linear_classifier(seed):
    # MeZO §3.3, as notebook 01 shows it: the objective is -accuracy(B), a step function with no
    # gradient, yet the finite differences carry signal (breast cancer, a linear classifier). Seed 1
    # starts predicting one class for every example: no ±εz flips a prediction, g = 0, and the run sits
    # on that plateau for ~250 steps before a perturbation flips one — the objective's failure mode
    import torch

    from zoedu.tasks import load_task
    from zoedu.train import fit

    task = load_task("tabular", dataset="breast_cancer", seed=seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(30, 2)
    start = task.evaluate(model, "validation")["accuracy"]
    h = fit(model, task, "mezo-accuracy", steps=400, lr=0.1, eps=0.1, batch_size=64, seed=seed, quiet=True,
            track_memory=False, device="cpu")
    assert h["backward_passes"].iloc[-1] == 0
    assert h["eval_accuracy"].iloc[-1] > max(start + 0.05, 0.85)
    assert h["train_accuracy"].iloc[-20:].mean() > h["train_accuracy"].iloc[:20].mean() + 0.05
