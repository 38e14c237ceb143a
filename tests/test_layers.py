"""The import-linter contract in pyproject.toml: layers only look down, lazy imports included."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_contract_is_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter is in the test extra)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


@pytest.mark.parametrize("check,value", [("non_negative", float("nan")), ("positive", float("inf")),
                                         ("positive", 0.0), ("non_negative", -1.0), ("unit_interval", 1.5),
                                         ("positive", "1e-3"), ("positive_int", True)])
def test_one_rule_per_kind_of_argument_refuses_nan_inf_and_out_of_range(check, value):
    from zoedu import checks

    with pytest.raises(ValueError, match="x="):
        getattr(checks, check)("x", value)


def test_optimizers_share_the_lr_rule():
    """lr = 0 is allowed by every optimizer (as torch.optim), refused by fit; NaN everywhere."""
    import torch

    from zoedu.optim import IPSGD, Addax, MeZO
    from zoedu.privacy import SemiDPSGD

    def params():
        return [torch.nn.Parameter(torch.zeros(2))]

    for make in (lambda lr: MeZO(params(), lr=lr), lambda lr: Addax(params(), lr=lr),
                 lambda lr: IPSGD(params(), lr=lr),
                 lambda lr: SemiDPSGD(torch.nn.Linear(2, 1), lambda m, b: m(b["x"]).sum(), lr=lr, beta=0.5,
                                      noise_multiplier=1.0, max_grad_norm=1.0)):
        make(0.0)
        for bad in (float("nan"), float("inf"), -1e-3):
            with pytest.raises(ValueError, match="lr="):
                make(bad)
