"""The fused Triton perturbation kernels (zoedu.optim._triton).

On CPU they run in Triton's interpreter: the ``backend`` fixture sets
``TRITON_INTERPRET=1`` for the duration of each test only (the module compiles its kernels
on first use, per mode, so the variable need not be set before import and does not leak
into other test modules). The same tests run on a CUDA GPU, without the interpreter,
where one is present.

Exactness: every comparison with a torch reference below is bitwise (``torch.equal``);
the references spell out the kernel's arithmetic (z rounded to the dtype, then
``fl(fl(a·p) + b·z)`` as one fma in fp32, evaluated in fp64 and rounded: exact, since a
product of two fp32 numbers is exact in fp64).
"""

import math

import pytest
import torch

pytest.importorskip("triton")

from zoedu.optim import _triton as T  # noqa: E402
from zoedu.optim import mix_seed  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(params=["interpreter", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request, monkeypatch):
    if request.param == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        return torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return torch.device("cuda")


def z_of(n, seed, device, dtype=torch.float32, offset=0):
    return T.randn_(torch.empty(n, dtype=dtype, device=device), seed, offset=offset)


def fma_ref(p, z, a, b):
    """fl_dtype(fl32(fl32(a)·p) + fl32(b)·z), the fma evaluated exactly in fp64."""
    a32 = torch.tensor(a, dtype=torch.float32, device=p.device)
    b32 = torch.tensor(b, dtype=torch.float32, device=p.device).double()
    ax = (a32 * p.float()).double()
    return (ax + b32 * z.double()).float().to(p.dtype)


# ---------------------------------------------------------------------------- the direction
def test_z_is_standard_normal(device):
    n = 1 << 16
    z = z_of(n, mix_seed(2024, 0, 0), device).double().cpu()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)            # sd of the mean: 1/256
    assert abs(z.std().item() - 1) < 5 / math.sqrt(2 * n)      # sd of the sd: 1/362
    assert abs((z.abs() > 3).double().mean().item() - 0.0027) < 0.0012
    # Kolmogorov–Smirnov distance to N(0, 1); 1.95/sqrt(n) is the 0.1 % critical value
    x, _ = z.sort()
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.95 / math.sqrt(n), ks
    # the four normals of one Philox call (elements 256 apart) and neighbours are uncorrelated
    zz = z.view(-1, 4, 256)
    for k in range(1, 4):
        r = torch.corrcoef(torch.stack([zz[:, 0].flatten(), zz[:, k].flatten()]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n / 4), (k, r)
    r = torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(n), r


def test_same_seed_same_z_different_seed_different_z(device):
    seed = mix_seed(7, 3, 0)  # a 63-bit seed
    z = z_of(3000, seed, device)
    assert torch.equal(z, z_of(3000, seed, device))
    # seeds differing in the low bits, in the high 32 bits only, or in the top bit
    for other in (seed ^ 1, seed ^ (1 << 40), seed ^ (1 << 62), 0, 1):
        w = z_of(3000, other, device)
        assert (w == z).float().mean().item() < 0.01, other
        assert abs(torch.corrcoef(torch.stack([z, w]).cpu())[0, 1].item()) < 0.1
    # seeds are reduced modulo 2**63
    assert T.philox_key(seed + (1 << 63)) == seed
    assert torch.equal(z_of(3000, seed + (1 << 63), device), z)
    assert torch.equal(z_of(100, -1, device), z_of(100, (1 << 63) - 1, device))


def test_z_is_counter_based(device):
    """z[i] depends only on (seed, i): not on the length, the grid or where a piece starts."""
    seed = mix_seed(11)
    full = z_of(5000, seed, device)
    assert torch.equal(z_of(1000, seed, device), full[:1000])
    assert torch.equal(z_of(1, seed, device), full[:1])
    for start, stop in ((1000, 2000), (333, 1500), (1023, 1025), (4097, 5000)):
        assert torch.equal(z_of(stop - start, seed, device, offset=start), full[start:stop]), (start, stop)
    # a slice of a tensor, given its offset, gets the same z as the whole tensor
    p = torch.zeros(5000, device=device)
    T.axpz_(p[777:3001], seed, 1.0, 1.0, offset=777)
    assert torch.equal(p[777:3001], full[777:3001])
    assert torch.equal(p[:777], torch.zeros(777, device=device)) and p[3001:].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_z_in_low_precision_is_z_rounded_to_nearest(device, dtype):
    seed = mix_seed(5)
    z32 = z_of(4096, seed, device)
    assert torch.equal(z_of(4096, seed, device, dtype), z32.to(dtype))  # torch rounds to nearest even


# ---------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_axpz_matches_reference_bitwise(device, dtype):
    torch.manual_seed(0)
    seed = mix_seed(1, 2)
    p0 = (torch.randn(3000) * 0.05).to(device=device, dtype=dtype)
    z = z_of(3000, seed, device, dtype)
    for a, b in ((1.0, 1e-3), (1.0, -1e-3), (1 - 1e-4 * 0.01, 1e-3 - 1e-4 * 0.37), (0.5, 0.0), (-2.0, 3.0)):
        p = p0.clone()
        out = T.axpz_(p, seed, a, b)
        assert out is p
        assert torch.equal(p, fma_ref(p0, z, a, b)), (dtype, a, b)
    if dtype == torch.float32 and device.type == "cpu":  # torch's add_ on CPU is this fma
        p = p0.clone()
        T.axpz_(p, seed, 1.0, 1e-3)
        assert torch.equal(p, p0.clone().add_(z, alpha=1e-3))


def test_axpz_is_mezos_fused_restore_and_update(device):
    """From θ₋ = θ − εz, restore + update θ ← (1 − ηλ)(θ₋ + εz) − ηg·z in one pass:
    a = 1 − ηλ, b = (1 − ηλ)ε − ηg (not ε − ηg, which is off by ηλε·z)."""
    torch.manual_seed(1)
    eps, lr, wd, g = 1e-2, 0.1, 0.5, 2.5
    seed = mix_seed(9, 0, 0)
    theta = torch.randn(2048, device=device)
    z = z_of(2048, seed, device)
    exact = (1 - lr * wd) * theta.double() - lr * g * z.double()  # θ − η(g·z + λθ)
    minus = T.axpz_(theta.clone(), seed, 1.0, -eps)
    new = T.axpz_(minus.clone(), seed, 1 - lr * wd, (1 - lr * wd) * eps - lr * g)
    assert torch.equal(new, fma_ref(minus, z, 1 - lr * wd, (1 - lr * wd) * eps - lr * g))
    err = (new.double() - exact).abs().max().item()
    assert err <= 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()  # a few roundings
    wrong = T.axpz_(minus.clone(), seed, 1 - lr * wd, eps - lr * g)
    assert (wrong.double() - exact).abs().max().item() > 100 * err


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_twice_is_two_rounded_adds(device, dtype):
    torch.manual_seed(2)
    seed = mix_seed(3)
    p0 = (torch.randn(2500) * 0.05).to(device=device, dtype=dtype)
    z = z_of(2500, seed, device, dtype)
    p = p0.clone()
    assert T.add_twice_(p, seed, -1e-3) is p
    assert torch.equal(p, fma_ref(fma_ref(p0, z, 1.0, -1e-3), z, 1.0, -1e-3))
    if dtype != torch.float32:  # two roundings are not one: fl(p − 2εz) differs somewhere
        assert not torch.equal(p, fma_ref(p0, z, 1.0, -2e-3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_and_zero_size(device, dtype):
    p = torch.ones(1500, dtype=dtype, device=device)
    ptr = p.data_ptr()
    T.axpz_(p, 1, 1.0, 0.25)
    assert p.data_ptr() == ptr and p.dtype == dtype
    assert not torch.equal(p, torch.ones_like(p))
    empty = torch.empty(0, dtype=dtype, device=device)
    assert T.axpz_(empty, 1, 1.0, 1.0) is empty
    # works on parameters that require grad (in place, under no_grad)
    w = torch.nn.Parameter(torch.zeros(64, 8, dtype=dtype, device=device))
    T.randn_(w, 4)
    assert torch.equal(w.detach().flatten(), z_of(512, 4, device, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lr0_round_trips_drift_no_more_than_the_torch_path(device, dtype):
    """MeZO's lr = 0 step, θ + εz, −εz twice, +εz, over 10 steps; against the same passes
    done with torch's ``add_`` on the same z (the Perturber's arithmetic)."""
    torch.manual_seed(3)
    n, eps = 2048, 1e-3
    theta = (torch.randn(n) * 0.05).to(device=device, dtype=dtype)
    kern, ref = theta.clone(), theta.clone()
    for step in range(10):
        seed = mix_seed(0, step, 0)
        T.axpz_(kern, seed, 1.0, eps)
        T.add_twice_(kern, seed, -eps)
        T.axpz_(kern, seed, 1.0, eps)
        z = z_of(n, seed, device, dtype)
        ref.add_(z, alpha=eps).add_(z, alpha=-eps).add_(z, alpha=-eps).add_(z, alpha=eps)

    def drift(x):
        d = (x.double() - theta.double()).cpu()
        return (d != 0).double().mean().item(), d.pow(2).mean().sqrt().item()

    (f_k, rms_k), (f_r, rms_r) = drift(kern), drift(ref)
    if dtype == torch.float32 and device.type == "cpu":
        assert torch.equal(kern, ref)  # the same fma arithmetic as torch's add_ on CPU
    # bf16/fp16: torch rounds alpha = ε to the dtype, the kernel keeps it in fp32
    assert f_k <= 1.1 * f_r + 0.005, (f_k, f_r)
    assert rms_k <= 1.2 * rms_r, (rms_k, rms_r)
    assert f_k < 0.25  # round trips are exact for most weights


# ---------------------------------------------------------------------------- many tensors, one launch
def test_tensor_keys_are_mix_seed():
    assert T.tensor_keys(5, 4, 2) == [mix_seed(5, 2 + k, 0) for k in range(4)]
    big = mix_seed(123)
    assert T.tensor_keys(big, 3) == [mix_seed(big, k, 0) for k in range(3)]
    assert T.tensor_keys(1, 0) == []
    with pytest.raises(ValueError, match="count and start_index must be non-negative"):
        T.tensor_keys(1, -1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_foreach_equals_the_per_tensor_kernels(device, dtype):
    torch.manual_seed(4)
    shapes = [(10,), (0,), (1024,), (3, 700), (1,), (2049,)]
    ps = [(torch.randn(s) * 0.05).to(device=device, dtype=dtype) for s in shapes]
    ref = [p.clone() for p in ps]
    keys = T.tensor_keys(mix_seed(77), len(ps))
    f = T.Foreach(ps)
    a = [1 - 1e-3 if p.dim() >= 2 else 1.0 for p in ps]  # MeZO: weight decay on matrices only
    f.axpz_(keys, a, 1e-3)
    for p, k, ak in zip(ref, keys, a):
        T.axpz_(p, k, ak, 1e-3)
    assert all(torch.equal(x, y) for x, y in zip(ps, ref))
    f.add_twice_(keys, -1e-3)
    for p, k in zip(ref, keys):
        T.add_twice_(p, k, -1e-3)
    assert all(torch.equal(x, y) for x, y in zip(ps, ref))
    f.randn_(torch.tensor(keys, dtype=torch.int64, device=device))  # keys as a device tensor
    assert all(torch.equal(x, z_of(x.numel(), k, device, dtype).view(x.shape)) for x, k in zip(ps, keys))


def test_foreach_follows_a_replaced_storage(device):
    p, q = torch.zeros(300, device=device), torch.zeros(5000, device=device)
    f = T.Foreach([p, q])
    f.randn_([1, 2])
    old = q.data
    q.data = torch.zeros(7000, device=device)  # new storage, new size
    f.randn_([1, 2])
    assert torch.equal(q, z_of(7000, 2, device)) and torch.equal(old, z_of(5000, 2, device))


def test_foreach_bad_arguments(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    a, b = torch.zeros(4), torch.zeros(4)
    with pytest.raises(ValueError, match="non-empty list"):
        T.Foreach([])
    with pytest.raises(ValueError, match="share one dtype and device"):
        T.Foreach([a, b.half()])
    with pytest.raises(ValueError, match=r"tensors\[1\] must be contiguous"):
        T.Foreach([a, torch.zeros(3, 3).t()])
    with pytest.raises(TypeError, match="dtype must be one of"):
        T.Foreach([a.double()])
    f = T.Foreach([a, b])
    with pytest.raises(ValueError, match=r"one seed per tensor \(2\), got 1"):
        f.randn_([1])
    with pytest.raises(ValueError, match=r"a must be a float or one float per tensor \(2\), got 3"):
        f.axpz_([1, 2], [1.0, 1.0, 1.0], 0.1)
    with pytest.raises(TypeError, match="s must be a float or one float per tensor"):
        f.add_twice_([1, 2], "x")
    with pytest.raises(ValueError, match=r"int64 of shape \(2,\)"):
        f.randn_(torch.zeros(2, dtype=torch.int32))
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        f.randn_([1, 2])


# ---------------------------------------------------------------------------- the API
def test_available(monkeypatch):
    cpu = torch.zeros(3)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert T.available(cpu) and T.available()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not T.available(cpu)
    assert T.available() == torch.cuda.is_available()
    with pytest.raises(RuntimeError, match="CUDA tensor.*TRITON_INTERPRET"):
        T.axpz_(cpu, 0, 1.0, 1.0)
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        T.available([1.0])


def test_bad_arguments_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    p = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="p must be contiguous"):
        T.axpz_(p.t(), 0, 1.0, 1.0)
    with pytest.raises(TypeError, match="p.dtype must be one of float32, bfloat16, float16"):
        T.randn_(torch.zeros(4, dtype=torch.float64), 0)
    with pytest.raises(TypeError, match="p.dtype"):
        T.randn_(torch.zeros(4, dtype=torch.int32), 0)
    with pytest.raises(TypeError, match="p must be a torch.Tensor"):
        T.randn_([0.0, 1.0], 0)
    with pytest.raises(TypeError, match="seed must be a Python int"):
        T.axpz_(p, 1.5, 1.0, 1.0)
    with pytest.raises(TypeError, match="seed must be a Python int"):
        T.axpz_(p, True, 1.0, 1.0)
    with pytest.raises(ValueError, match="offset must be a non-negative int"):
        T.randn_(p, 0, offset=-1)
    with pytest.raises(TypeError, match="b must be a Python float"):
        T.axpz_(p, 0, 1.0, torch.tensor(1.0))
    with pytest.raises(TypeError, match="s must be a Python float"):
        T.add_twice_(p, 0, "0.1")


def test_z_is_tritons_randn4x_stream():
    """The kernel's Philox + Box–Muller is tl.randn4x's, element i taking output
    (i // 256) % 4 of counter (i // 1024)·256 + i % 256. Checked in a fresh interpreter,
    where TRITON_INTERPRET is set before triton is imported (so tl.randn4x can run)."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        import torch, triton, triton.language as tl
        from zoedu.optim import _triton as T

        @triton.jit
        def four(out_ptr, seed, N: tl.constexpr):
            c = tl.arange(0, N).to(tl.int64) + (1 << 32) - 300  # counters across 2**32
            z0, z1, z2, z3 = tl.randn4x(seed, c)
            r = tl.arange(0, N)
            tl.store(out_ptr + r, z0)
            tl.store(out_ptr + N + r, z1)
            tl.store(out_ptr + 2 * N + r, z2)
            tl.store(out_ptr + 3 * N + r, z3)

        seed = (1 << 62) + 12345
        lib = torch.empty(4, 1024)
        four[(1,)](lib, seed, N=1024)
        start = (1 << 32) - 300  # a counter; its group starts at element 4 * start
        ours = torch.empty(5 * 1024)
        T.randn_(ours, seed, offset=4 * start - 4 * (start % 256))
        ours = ours.view(5, 4, 256).permute(1, 0, 2).reshape(4, -1)[:, start % 256:start % 256 + 1024]
        assert torch.equal(ours, lib), (ours - lib).abs().max()
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
