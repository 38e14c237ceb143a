"""zoedu.memory: measure() on known allocations, estimate() against measure() and the papers."""

import gc
import math
import sys

import pytest
import torch
from torch import nn

from zoedu.memory import CATEGORIES, METHODS, Footprint, estimate, known_models, measure

MB = 1_000_000


def nbytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --------------------------------------------------------------------------- Footprint
def test_footprint_helpers():
    a = Footprint(params=100, grads=50, optimizer=200, activations=25, other=25)
    b = Footprint(params=100, activations=100)
    assert a.total == 400 and b.total == 200
    assert a.to_dict() == {"params": 100, "grads": 50, "optimizer": 200, "activations": 25, "other": 25,
                           "total": 400}
    assert a.gb()["total"] == pytest.approx(400e-9)
    assert (a + b).total == 600 and (a + b).params == 200
    assert a.ratio(b) == 2.0
    assert a.scaled(2).total == 800 and a.scaled(2).optimizer == 400
    text = str(Footprint(params=2 * MB, activations=1 * MB, device="cpu"))
    assert "3 MB" in text and "params 2" in text and "cpu" in text


# --------------------------------------------------------------------------- measure
def test_measure_sees_a_freed_megabyte():
    def fn():
        x = torch.empty(250_000)  # 1 MB of float32
        del x
        torch.empty(10)

    fp = measure(fn)
    assert 1 * MB <= fp.total < 1.01 * MB
    assert fp.device == "cpu"


def test_measure_counts_tensors_that_existed_before_from_the_start():
    old = torch.ones(500_000)  # 2 MB, made before measure; first read after the 1 MB peak

    def fn():
        y = torch.empty(250_000)
        del y
        return old.sum()

    fp = measure(fn)
    assert fp.total >= 3 * MB  # it was alive while the 1 MB tensor was


def test_measure_linear_params_and_grads():
    torch.manual_seed(0)
    lin = nn.Linear(256, 256)
    x = torch.randn(8, 256)

    fp = measure(lambda: lin(x).sum().backward(), model=lin)
    assert fp.params == nbytes(lin)
    assert fp.grads == nbytes(lin)  # every .grad is alive at the end of backward
    assert fp.optimizer == 0


@pytest.mark.parametrize("pass_objects", [True, False])
def test_measure_adam_state_is_twice_the_params(pass_objects):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, 128)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    kwargs = dict(model=model, optimizer=opt) if pass_objects else {}
    fp = measure(step, **kwargs)
    p = nbytes(model)
    assert fp.params == p
    assert fp.grads == p
    assert 2 * p <= fp.optimizer <= 2 * p + 64  # exp_avg and exp_avg_sq (and the scalar step counts)
    # the update's scratch (two tensors the size of the largest weight) and the input batch
    assert fp.other <= 2 * 128 * 256 * 4 + x.numel() * 4 + 64
    # a second step: the state existed before, it is still counted as optimizer state
    fp2 = measure(step, **kwargs)
    assert 2 * p <= fp2.optimizer <= 2 * p + 64


def test_measure_sgd_has_no_state_and_stops_counting_freed_grads():
    model = nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 64)
    fp = measure(lambda: (model(x).sum().backward(), opt.step(), opt.zero_grad(set_to_none=True)),
                 model=model, optimizer=opt)
    assert fp.optimizer == 0 and fp.grads == nbytes(model)
    # after zero_grad(set_to_none=True) nothing of the gradient is left: a later measure sees none
    assert measure(lambda: model(x), model=model).grads == 0


def test_measure_cleans_up_after_an_error_and_nests():
    from torch.nn.modules import module as module_mod
    from torch.optim import optimizer as optimizer_mod

    hooks_before = (len(module_mod._global_forward_hooks), len(optimizer_mod._global_optimizer_pre_hooks))
    lin = nn.Linear(32, 32)

    def boom():
        lin(torch.randn(2, 32))
        raise RuntimeError("inside fn")

    with pytest.raises(RuntimeError, match="inside fn"):
        measure(boom, model=lin)
    assert (len(module_mod._global_forward_hooks), len(optimizer_mod._global_optimizer_pre_hooks)) == hooks_before
    inner = {}

    def outer_fn():
        inner["fp"] = measure(lambda: torch.empty(250_000), model=lin)
        torch.empty(500_000)

    outer = measure(outer_fn, model=lin)
    assert inner["fp"].total >= 1 * MB + nbytes(lin)
    assert outer.total >= 2 * MB + nbytes(lin)


def test_measure_rejects_bad_input():
    with pytest.raises(ValueError, match="fn must be a callable"):
        measure(3)
    with pytest.raises(ValueError, match="model must be"):
        measure(lambda: None, model="opt")
    with pytest.raises(ValueError, match="optimizer must be"):
        measure(lambda: None, optimizer=object())
    with pytest.raises(ValueError, match="device="):
        measure(lambda: None, device="not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            measure(lambda: None, device="cuda")


# --------------------------------------------------------------------------- methods
@pytest.fixture(scope="module")
def tiny_cls(tokenizer):
    from zoedu.models import load_model
    from zoedu.tasks import load_task

    model, _ = load_model("tiny-opt", size="1m", num_labels=2)
    task = load_task("sentiment", tokenizer=tokenizer, n_train=200, n_validation=20, max_length=64)
    return model, task


@pytest.fixture(scope="module")
def tiny_table(tiny_cls):
    from zoedu.experiments.memory import measure_table

    model, task = tiny_cls
    return measure_table(model, task, batch_size=8).set_index("method")


def test_every_fit_method_is_measured_and_estimated_within_25_percent(tiny_table):
    from zoedu.train import methods

    expected = ["inference"] + [m for m in METHODS if m != "inference" and m in methods()]
    assert list(tiny_table.index) == expected
    assert {"adam", "sgd"} <= set(expected)
    for method, row in tiny_table.iterrows():
        assert 0.75 <= row["ratio"] <= 1.25, (method, row["estimated"], row["measured"])


def test_measured_categories_follow_the_methods(tiny_table, tiny_cls):
    p = nbytes(tiny_cls[0])
    t = tiny_table
    assert (t["params"] == p).all()
    # two moments (and a 4-byte step counter per parameter tensor), alive at the steady-state peak
    assert 2 * p <= t.loc["adam", "optimizer"] <= 2 * p + 4 * len(list(tiny_cls[0].parameters()))
    assert t.loc["adam", "grads"] == p
    assert t.loc["sgd", "grads"] == p and t.loc["sgd", "optimizer"] == 0
    assert t.loc["adam", "total"] > 2.5 * t.loc["sgd", "total"] / 1.5
    if "ipsgd" in t.index:  # in-place SGD frees each gradient as soon as it is applied
        assert t.loc["ipsgd", "grads"] == 0
        assert t.loc["ipsgd", "total"] < t.loc["sgd", "total"]
    if "mezo" in t.index:  # forward passes only: inference memory plus the z scratch
        assert t.loc["mezo", "grads"] == 0 and t.loc["mezo", "optimizer"] == 0
        assert t.loc["mezo", "total"] < 1.5 * t.loc["inference", "total"]
    if "addax" in t.index:
        assert t.loc["addax", "grads"] == 0 and t.loc["addax", "optimizer"] == 0


@pytest.mark.parametrize("name, num_labels", [("tiny-opt", None), ("tiny-gpt2", 2), ("tiny-gpt2", None)])
def test_estimate_matches_measure_on_tiny_models(tokenizer, name, num_labels):
    """Causal LM (the 30 522-token head dominates) and classification, fp32, CPU."""
    from zoedu.methods.first_order import adamw
    from zoedu.models import load_model
    from zoedu.tasks.base import Task

    model, _ = load_model(name, size="1m", num_labels=num_labels)
    model.train()
    kind = "lm" if num_labels is None else "classification"
    split = {"text": ["x"], "label": [0]}
    task = Task("probe", kind, {"train": split, "validation": split}, tokenizer=tokenizer, num_labels=2)
    g = torch.Generator().manual_seed(0)
    b, s = 4, 48
    ids = torch.randint(1000, 2000, (b, s), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": ids.clone() if kind == "lm" else torch.zeros(b, dtype=torch.long)}
    for method in ("inference", "adam", "sgd"):
        opt = None
        if method == "inference":
            def fn():
                with torch.no_grad():
                    task.loss(model, batch)
        else:
            opt = (adamw if method == "adam" else torch.optim.SGD)(model.parameters(), lr=1e-4)  # fit's optimizers

            def fn():
                def closure():
                    opt.zero_grad(set_to_none=True)
                    loss = task.loss(model, batch)
                    loss.backward()
                    return loss
                opt.step(closure)
        measured = measure(fn, model=model, optimizer=opt)
        model.zero_grad(set_to_none=True)
        est = estimate(model, method, batch_size=b, seq_len=s, device="cpu")
        assert 0.75 <= est.ratio(measured) <= 1.25, (method, str(est), str(measured))


def test_measure_through_fit_records_peak_memory(tiny_cls):
    from zoedu.train import fit

    model, task = tiny_cls
    import copy

    h = fit(copy.deepcopy(model), task, "adam", steps=1, lr=1e-4, batch_size=4, device="cpu", eval_every=0,
            quiet=True)
    assert h["peak_memory"].iloc[0] >= 4 * nbytes(model)  # weights, grads and two Adam moments


def test_fit_reports_the_steady_state_peak(tokenizer):
    """Batch 64 × 128 on tiny-opt 1m: the forward pass outweighs the update, so from step 2
    on Adam's moments (2 × the weights) sit on top of the activations."""
    from zoedu.models import load_model
    from zoedu.tasks import load_task
    from zoedu.train import fit

    model, tok = load_model("tiny-opt", size="1m", num_labels=2)
    task = load_task("sentiment", tokenizer=tok, n_train=200, n_validation=20, max_length=128)
    h = fit(model, task, "adam", steps=3, lr=1e-4, batch_size=64, device="cpu", eval_every=0, quiet=True)
    first, steady = h.attrs["first_step_peak_memory"], h["peak_memory"].iloc[-1]
    assert h["peak_memory"].iloc[0] == first and h["peak_memory"].is_monotonic_increasing
    assert steady >= first + 1.9 * nbytes(model), (first, steady)


def test_measure_table_steady_state_against_first_step(tokenizer):
    from zoedu.experiments.memory import measure_table
    from zoedu.models import load_model
    from zoedu.tasks import load_task

    model, tok = load_model("tiny-opt", size="1m", num_labels=2)
    task = load_task("sentiment", tokenizer=tok, n_train=200, n_validation=20, max_length=128)
    steady = measure_table(model, task, ["adam"], batch_size=64).iloc[0]
    first = measure_table(model, task, ["adam"], batch_size=64, first_step=True).iloc[0]
    p = nbytes(model)
    assert steady["batch"] == first["batch"]  # step 2 is measured on step 1's batch
    assert first["optimizer"] == 0 and steady["optimizer"] >= 2 * p  # the peak is in the backward pass
    assert steady["measured"] - first["measured"] == pytest.approx(2 * p, rel=0.01)
    assert steady["estimated"] - first["estimated"] == 2 * p


def test_estimate_is_the_steady_state():
    """The 02 dashboard's setting (MiniLM, 16 × 128, CPU): the activations outweigh the
    update, so only from step 2 does Adam cost more than SGD (by its two moments)."""
    kw = dict(batch_size=16, seq_len=128, num_labels=2, device="cpu")
    adam, sgd = estimate("minilm", "adam", **kw), estimate("minilm", "sgd", **kw)
    first = estimate("minilm", "adam", first_step=True, **kw)
    assert adam.optimizer == 2 * adam.params and adam.total == sgd.total + 2 * adam.params
    assert first.total == sgd.total and first.optimizer == 0
    for m in ("inference", "sgd", "ipsgd", "mezo", "addax"):  # no optimizer state: no difference
        assert estimate("minilm", m, **kw) == estimate("minilm", m, first_step=True, **kw)


def test_estimate_counts_one_z_slot_for_mezo_on_cuda():
    """zoedu.optim's torch passes draw z into one buffer per stream (a whole parameter on
    CUDA); only exact restoration's fused restore-and-update pass holds two."""
    from zoedu.memory.architectures import _arch

    largest = _arch("tiny-opt", num_labels=None, size="1m").largest * 4
    kw = dict(batch_size=1, seq_len=1, size="1m", device="cuda")
    mezo, inference = estimate("tiny-opt", "mezo", **kw), estimate("tiny-opt", "inference", **kw)
    assert mezo.activations == 0 and mezo.other - inference.other == largest
    exact = estimate("tiny-opt", "mezo", exact_restore=True, **kw)
    assert exact.other - inference.other > 2 * largest


# --------------------------------------------------------------------------- estimate
def test_parameter_counts_are_exact():
    from transformers import OPTConfig, OPTForCausalLM

    from zoedu.memory import parameter_count

    assert parameter_count("facebook/opt-125m") == 125_239_296
    with torch.device("meta"):
        ref = OPTForCausalLM(OPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       ffn_dim=3072, vocab_size=50272, max_position_embeddings=2048))
    assert parameter_count("facebook/opt-125m") == sum(p.numel() for p in ref.parameters())  # tied once
    assert parameter_count("meta-llama/Llama-2-7b-hf") == 6_738_415_616
    assert parameter_count("tiny-opt", size="1m") == 1_018_624
    from zoedu.models import count_parameters, load_model

    assert parameter_count("tiny-gpt2", size="1m", num_labels=2) == count_parameters(
        load_model("tiny-gpt2", size="1m", num_labels=2)[0])
    assert "facebook/opt-66b" in known_models() and "minilm" in known_models()


def test_estimate_of_opt_13b_matches_the_mezo_paper():
    """MeZO paper (Malladi et al. 2023) Fig. 3 / Table 22, OPT-13B, MultiRC (~400 tokens),
    batch 1: MeZO and inference fit one A100-80GB (≈ 26–30 GB); full fine-tuning with Adam
    takes ≈ 316 GB, four A100-80GB. Adam is compared in fp16 mixed precision (fp32 weights
    and moments), the usual way to fine-tune with Adam in fp16."""
    kw = dict(batch_size=1, seq_len=400, dtype="float16")
    mezo = estimate("facebook/opt-13b", "mezo", **kw)
    inference = estimate("facebook/opt-13b", "inference", **kw)
    assert 24e9 <= inference.total <= mezo.total <= 32e9
    assert mezo.grads == 0 and mezo.optimizer == 0
    adam = estimate("facebook/opt-13b", "adam", mixed_precision=True, **kw)
    assert 0.75 <= adam.total / 316e9 <= 1.25
    assert math.ceil(adam.total / 80e9) == 4
    assert adam.total / mezo.total > 8  # "up to 12× memory reduction"
    # pure fp16 Adam still needs more than one 80 GB GPU; in-place SGD and Addax fit one
    assert estimate("facebook/opt-13b", "adam", **kw).total > 80e9
    assert estimate("facebook/opt-13b", "ipsgd", **kw).total < 40e9
    assert estimate("facebook/opt-13b", "addax", k0=4, k1=4, length_threshold=170, **kw).total < 80e9


def test_estimate_orders_methods_and_scales():
    kw = dict(batch_size=4, seq_len=256, dtype="bfloat16")
    totals = {m: estimate("facebook/opt-1.3b", m, **kw).total for m in METHODS}
    assert totals["adam"] > totals["sgd"] > totals["ipsgd"] >= totals["mezo"] >= totals["inference"]
    fp32 = estimate("facebook/opt-1.3b", "sgd", batch_size=4, seq_len=256, dtype="float32")
    assert fp32.params == 2 * estimate("facebook/opt-1.3b", "sgd", **kw).params
    longer = estimate("facebook/opt-1.3b", "ipsgd", batch_size=4, seq_len=1024, dtype="bfloat16")
    assert longer.activations > 3 * estimate("facebook/opt-1.3b", "ipsgd", **kw).activations
    # Addax's first-order part on short examples costs less than backpropagating long ones
    addax = estimate("facebook/opt-1.3b", "addax", k0=4, k1=4, length_threshold=64, **kw)
    assert totals["mezo"] <= addax.total < totals["ipsgd"]


def test_estimate_accepts_configs_and_modules():
    from zoedu.models import load_model, tiny_config

    cfg = tiny_config("tiny-gpt2", "1m")
    by_config = estimate(cfg, "adam", batch_size=2, seq_len=16)
    by_name = estimate("tiny-gpt2", "adam", batch_size=2, seq_len=16, size="1m")
    assert by_config.total == by_name.total
    model, _ = load_model("tiny-gpt2", size="1m")
    assert estimate(model, "adam", batch_size=2, seq_len=16).params == by_name.params
    assert estimate("minilm", "inference", batch_size=2, seq_len=16, num_labels=2).params > 22_000_000


def test_estimate_rejects_bad_input():
    kw = dict(batch_size=1, seq_len=16)
    with pytest.raises(ValueError, match="not a known model.*facebook/opt-125m"):
        estimate("facebook/opt-7b", "adam", **kw)
    with pytest.raises(ValueError, match="method='lion'.*mezo"):
        estimate("gpt2", "lion", **kw)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="batch_size"):
            estimate("gpt2", "adam", batch_size=bad, seq_len=16)
    with pytest.raises(ValueError, match="seq_len"):
        estimate("gpt2", "adam", batch_size=1, seq_len=0)
    with pytest.raises(ValueError, match="exceeds the 1024 positions"):
        estimate("gpt2", "adam", batch_size=1, seq_len=2048)
    with pytest.raises(ValueError, match="dtype"):
        estimate("gpt2", "adam", dtype="int8", **kw)
    with pytest.raises(ValueError, match="device"):
        estimate("gpt2", "adam", device="tpu", **kw)
    with pytest.raises(ValueError, match="mixed_precision"):
        estimate("gpt2", "adam", dtype="float32", mixed_precision=True, **kw)
    with pytest.raises(ValueError, match="length_threshold"):
        estimate("gpt2", "addax", length_threshold=32, **kw)
    with pytest.raises(ValueError, match="plain Linear"):
        estimate(nn.Linear(2, 2), "adam", **kw)
    with pytest.raises(ValueError, match="num_labels"):
        estimate("gpt2", "adam", num_labels=1, **kw)


# --------------------------------------------------------------------------- tables and CLI
def test_estimate_table_and_fits_on():
    from zoedu.experiments.memory import estimate_table, fits_on

    df = estimate_table(["facebook/opt-125m", "facebook/opt-13b"], ["inference", "adam"])
    assert list(df["method"]) == ["inference", "adam"] * 2
    assert {"model", "parameters", *CATEGORIES, "total", "total_GB", "fits_24GB", "fits_80GB",
            "gpus_needed"} <= set(df.columns)
    row = df[(df.model == "facebook/opt-13b") & (df.method == "inference")].iloc[0]
    assert not row["fits_24GB"] and row["fits_40GB"] and row["smallest_gpu_GB"] == 40
    assert fits_on(100e9)["gpus_needed"] == 2 and math.isnan(fits_on(100e9)["smallest_gpu_GB"])
    with pytest.raises(ValueError, match="gpus"):
        fits_on(1e9, gpus=(0,))


def test_cli_prints_the_estimate_table(capsys):
    from zoedu.cli import main

    code = main(["memory", "facebook/opt-13b", "--methods", "inference,adam,sgd,mezo", "--batch-size", "1",
                 "--seq-len", "400", "--dtype", "float16"])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if "total" in line and "params" in line)
    for col in ("params", "grads", "optimizer", "activations", "other", "total"):
        assert col in header
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in
            (["inference"], ["adam"], ["sgd"], ["mezo"])}
    assert set(rows) == {"inference", "adam", "sgd", "mezo"}
    assert float(rows["mezo"][1]) == pytest.approx(25.707, abs=0.01)  # params in GB
    assert float(rows["adam"][6]) > 4 * float(rows["mezo"][6])  # totals


def test_cli_help_and_errors(capsys):
    from zoedu.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["memory", "--help"])
    assert exit_info.value.code == 0
    assert "--seq-len" in capsys.readouterr().out
    assert main(["memory", "facebook/opt-13b", "--methods", "lion"]) == 2
    assert "method='lion'" in capsys.readouterr().err


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_measure_agrees_with_the_cuda_allocator():
    from zoedu.models import load_model

    dev = torch.device("cuda")
    model, _ = load_model("tiny-opt", size="25m", num_labels=2, device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 2000, (8, 128), device=dev)
    labels = torch.zeros(8, dtype=torch.long, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
        opt.step()

    step()  # warm up: cuBLAS workspaces, optimizer state
    torch.cuda.synchronize()
    known = nbytes(model) + sum(t.numel() * t.element_size() for s in opt.state.values()
                                for t in s.values() if torch.is_tensor(t) and t.is_cuda)
    known += ids.numel() * 8 + labels.numel() * 8
    known += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    unseen = torch.cuda.memory_allocated() - known  # allocations measure never sees (workspaces)
    fp = measure(step, model=model, optimizer=opt)
    assert fp.device.startswith("cuda") and fp.allocator_peak is not None
    assert fp.total == pytest.approx(fp.allocator_peak - unseen, rel=0.05)
    assert fp.optimizer == 2 * nbytes(model)


def test_estimate_counts_mezo_exact_restoration_when_asked():
    from zoedu.memory import EXACT_RESTORE_BYTES

    # a batch whose activations exceed the passes' scratch (two span slots with exact restoration)
    kw = dict(batch_size=16, seq_len=64, num_labels=2, size="5m", device="cpu")
    n = estimate("tiny-opt", "inference", **kw).params // 4
    exact = estimate("tiny-opt", "mezo", sparse_embedding=False, exact_restore=True, **kw)
    plain = estimate("tiny-opt", "mezo", exact_restore=False, **kw)
    assert exact.total - plain.total == int(EXACT_RESTORE_BYTES * n)
    assert estimate("tiny-opt", "mezo", **kw).total == plain.total  # MeZO's default: no lists
    # fit's default perturbs only the embedding rows a batch reads (16 × 64 of 30 522)
    rows = estimate("tiny-opt", "mezo", exact_restore=True, **kw)
    assert plain.total < rows.total < exact.total
    assert exact.total - rows.total == int(EXACT_RESTORE_BYTES * (30522 - 16 * 64) * 128)
    half = dict(kw, dtype="bfloat16")
    assert estimate("tiny-opt", "mezo", **half).total == estimate("tiny-opt", "mezo", exact_restore=False, **half).total
    assert estimate("tiny-opt", "mezo", exact_restore=True, **half).total > estimate("tiny-opt", "mezo", **half).total


def test_memory_chunk_is_the_optimizers_chunk():
    from zoedu.memory import ZO_CHUNK
    from zoedu.optim import CHUNK

    assert ZO_CHUNK == CHUNK


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_memory_hands_freed_heap_pages_back():
    psutil = pytest.importorskip("psutil")
    from zoedu.memory import release_memory

    me = psutil.Process()
    chunks = [torch.ones(16_000) for _ in range(3000)]  # 64 KB each: from the heap, not mmap (~190 MB)
    # one block allocated after them keeps the top of the heap in use, so free() alone cannot
    # shrink the heap (glibc's automatic trim only cuts a free top): only malloc_trim hands the
    # pages below it back
    pin = torch.ones(16_000)
    held = me.memory_info().rss
    del chunks
    gc.collect()
    assert me.memory_info().rss > held - 50 * 2**20  # freed, but the C allocator keeps the pages
    assert release_memory() is True
    assert me.memory_info().rss < held - 100 * 2**20
    del pin


def test_mezo_scratch_follows_the_passes_spans_and_workers(monkeypatch):
    """On CPU a ±1 pass (fit's default) draws one span of GROUP chunks at a time in one
    thread, with its words and int64 index beside it; a gaussian pass one span per torch
    thread."""
    from zoedu.memory import ZO_CHUNK, ZO_GROUP
    from zoedu.optim import GROUP

    assert ZO_GROUP == GROUP
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    # streams of 16 × 32 Ki: a scratch above the activations of one token
    kw = dict(batch_size=1, seq_len=1, device="cpu", size="25m", chunk=ZO_CHUNK * 16)
    rad = estimate("tiny-opt", "mezo", directions="rademacher", **kw)
    gau = estimate("tiny-opt", "mezo", directions="gaussian", **kw)
    span = ZO_CHUNK * 16 * ZO_GROUP
    assert estimate("tiny-opt", "mezo", **kw).total == rad.total  # None: fit's CPU default
    base = estimate("tiny-opt", "inference", **kw).other
    assert rad.other - base == 4 * span + span // 8 + span
    assert gau.other - base == 4 * span * 4
    with pytest.raises(ValueError, match="directions='uniform' is unknown"):
        estimate("tiny-opt", "mezo", directions="uniform", **kw)


def test_fits_adamw_is_torchs_adamw_fused_on_cpu():
    """fit's Adam on the CPU is torch's fused AdamW, the same update as torch's default loop
    to float32 rounding (its missing temporaries: test_estimate_matches_measure_on_tiny_models)."""
    from zoedu.methods.first_order import adamw

    g = torch.Generator().manual_seed(0)
    start = [torch.randn(300, 40, generator=g), torch.randn(40, generator=g)]
    runs = []
    for make in (adamw, torch.optim.AdamW):
        params = [nn.Parameter(t.clone()) for t in start]
        opt = make(params, lr=1e-2, weight_decay=0.1)
        gg = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gg)
            opt.step()
        runs.append((opt, params))
    (fused, a), (plain, b) = runs
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    assert not torch.equal(a[0], start[0])
    assert adamw([nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=1e-3).defaults["fused"] is True
    grouped = adamw([{"params": iter(a), "lr": 1e-3}], lr=1e-2)  # parameter groups holding a generator
    assert grouped.defaults["fused"] is True and len(grouped.param_groups[0]["params"]) == 2
