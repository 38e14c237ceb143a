"""Every zoedu optimizer skips parameters with requires_grad=False, as torch.optim does."""

import pytest
import torch
from torch import nn

from zoedu.optim import IPSGD, Addax, MeZO


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)


@pytest.mark.parametrize("name", ["mezo", "mezo-exact", "addax", "ipsgd"])
def test_frozen_parameters_do_not_move(name):
    model, x, y = model_and_data()
    frozen = model[0]
    for p in frozen.parameters():
        p.requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]

    def loss():
        return ((model(x) - y) ** 2).mean()

    def fo():
        out = loss()
        out.backward()
        return out

    if name.startswith("mezo"):
        opt = MeZO(model.parameters(), lr=1e-2, weight_decay=0.1, exact_restore=name == "mezo-exact")
        for _ in range(3):
            opt.step(loss)
        assert len(opt.trajectory()["group_of"]) == 2  # only the trainable ones are logged
    elif name == "addax":
        opt = Addax(model.parameters(), lr=1e-2, alpha=0.5, weight_decay=0.1)
        for _ in range(3):
            opt.step(loss, fo)
    else:
        opt = IPSGD(model.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            opt.step(fo)
    after = list(model.parameters())
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # frozen
    assert not torch.equal(before[2], after[2]) and not torch.equal(before[3], after[3])  # trained
