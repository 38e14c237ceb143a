"""zoedu.distributed: 2-rank gloo runs spawned from the test (with timeouts) against
single-process runs on the same global batches; failure modes; the launcher."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoedu import distributed
from zoedu.train import fit

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import dist_worker as worker  # noqa: E402

pytestmark = pytest.mark.distributed
SPAWN_TIMEOUT = 300  # seconds for a 2-process run on a loaded 2-core machine


def spawn(scenario: str, out: Path, timeout: float = SPAWN_TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Run tests/dist_worker.py as ranks 0 and 1 of a gloo group; both killed on timeout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return distributed.spawn([sys.executable, str(HERE / "dist_worker.py"), scenario, str(out)], 2,
                             timeout=timeout, env=env)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    procs = spawn("equal", out)
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{p.stderr[-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def task():
    return worker.setup()


def single_process(name, task):
    method, options = next((m, worker.fresh(n, o)) for n, m, o in worker.RUNS if n == name)
    if options.pop("parallel") == "directions":
        options["n_perturb"] = 2  # W ranks, one direction each == one process with W directions
    net = worker.model(name)
    if name == "pike":
        task = worker.corpus()
    h = fit(net, task, method, steps=worker.STEPS, batch_size=worker.BATCH, seed=0, device="cpu",
            eval_every=0, track_memory=False, quiet=True, **options)
    return h, net.state_dict()


@pytest.mark.parametrize("name,weight_atol", [("mezo", 1e-5), ("mezo-blocks", 1e-5), ("addax", 1e-5),
                                              ("directions", 1e-5),
                                              ("adam", 1e-4), ("ipsgd", 1e-5), ("semi_dp", 1e-5),
                                              ("pike", 1e-5)])
def test_two_ranks_equal_one_process(two_ranks, task, name, weight_atol):
    h, weights = single_process(name, task)
    for r, res in enumerate(two_ranks):
        got = res[name]
        np.testing.assert_allclose(got["history"]["loss"], h["loss"], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: rank {r}'s losses")
        for k, v in weights.items():
            torch.testing.assert_close(got["weights"][k], v, rtol=0, atol=weight_atol,
                                       msg=lambda m, k=k: f"{name}, rank {r}, {k}: {m}")
        assert got["attrs"]["world_size"] == 2
        assert got["attrs"]["parallel"] == ("directions" if name == "directions" else "data")
        first = next(iter(weights))
        assert not torch.equal(got["weights"][first], worker.model(name).state_dict()[first])
        if name == "pike":  # the same mixing weights and per-domain losses as one process
            cols = [c for c in h.columns if c.startswith(("weight/", "loss/", "count/"))]
            assert h["weight/prose"].nunique() > 1  # PiKE moved the weights
            assert cols and np.allclose(got["history"][cols].to_numpy(float), h[cols].to_numpy(float),
                                        rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", [n for n, _, _ in worker.RUNS])
def test_every_rank_holds_the_same_weights_and_history(two_ranks, name):
    a, b = two_ranks[0][name], two_ranks[1][name]
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), f"{name}: {k} differs between ranks"
    assert a["history"].equals(b["history"])


def test_bytes_sent_per_step(two_ranks):
    """Zeroth-order data parallelism sends scalars; the first-order runs send the gradient."""
    params = sum(v.numel() for k, v in two_ranks[0]["adam"]["weights"].items())
    mezo = two_ranks[0]["mezo"]["history"]["comm_bytes"]
    assert (mezo == 2 * 8).all()                          # ℓ₊ and ℓ₋ of the shard, float64
    assert (two_ranks[0]["directions"]["history"]["comm_bytes"] == 2 * 8).all()  # (g, loss)
    adam = two_ranks[0]["adam"]["history"]["comm_bytes"]
    assert (adam > 0.9 * 4 * params).all() and (adam <= 4 * params + 8).all()   # fp32 gradient + loss
    addax = two_ranks[0]["addax"]["history"]["comm_bytes"]
    assert (addax == adam + 2 * 8).all()                  # Addax: its first-order gradient + 2 scalars


def test_a_raising_rank_makes_the_other_exit_with_a_message(tmp_path):
    procs = spawn("raise", tmp_path, timeout=120)  # ZOEDU/gloo timeout is 30 s in the worker
    assert procs[1].returncode != 0 and "rank 1 fails on purpose" in procs[1].stderr
    assert procs[0].returncode != 0
    assert "RankFailure" in procs[0].stderr and "another rank raised, died" in procs[0].stderr
    assert "step 3" in procs[0].stderr


def test_diverged_ranks_raise_naming_the_step(tmp_path):
    procs = spawn("diverge", tmp_path, timeout=120)
    for p in procs:
        assert p.returncode != 0
        assert "RanksDiverged" in p.stderr and "after step 2" in p.stderr


def test_compare_nproc_prints_one_table(tmp_path):
    cmd = [sys.executable, "-m", "zoedu", "compare", "--nproc", "2", "--task", "sentiment", "--model", "tiny-opt",
           "--size", "1m", "--methods", "mezo,adam", "--steps", "3", "--batch-size", "4",
           "--eval-examples", "16", "--max-length", "32", "--quiet", "--html", str(tmp_path / "c.html")]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ZOEDU_DIST_TIMEOUT="60")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=SPAWN_TIMEOUT, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("train_loss") == 1, p.stdout      # one table, from rank 0
    assert p.stdout.count("wrote ") == 1 and (tmp_path / "c.html").exists()
    lines = [ln.split()[0] for ln in p.stdout.splitlines() if ln.strip()]
    assert "mezo" in lines and "adam" in lines


# --------------------------------------------------------------------------- in one process
def test_without_a_process_group_nothing_changes(sentiment):
    assert distributed.resolve(None) is None and distributed.world_size() == 1 and distributed.is_main()
    with pytest.raises(ValueError, match="needs an initialised process group"):
        distributed.resolve("data")
    with pytest.raises(ValueError, match="parallel='bogus' is unknown; allowed"):
        distributed.resolve("bogus")


def test_shards_split_the_batch_in_contiguous_rows():
    batch = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(5), "meta": "x"}
    parts = [distributed.shard(batch, r, 2) for r in range(2)]
    assert [w for _, w in parts] == [2 / 5, 3 / 5]
    assert torch.equal(torch.cat([p["labels"] for p, _ in parts]), batch["labels"])
    assert parts[0][0]["meta"] == "x"
    with pytest.raises(ValueError, match="cannot be split over 8 ranks: batch_size"):
        distributed.shard(batch, 0, 8)


# --------------------------------------------------------------------------- device_map (accelerate)
SPLIT = {"model.decoder.embed_tokens": 0, "model.decoder.embed_positions": 0, "model.decoder.layers.0": 0,
         "model.decoder.layers.1": 1, "model.decoder.final_layer_norm": 1, "score": 1}


def _device_map(devices):
    return {k: devices[v] for k, v in SPLIT.items()}


def test_device_map_keeps_the_placement_and_trains_like_one_device(sentiment):
    from zoedu.models import load_model

    mapped, _ = load_model("tiny-opt", size="1m", num_labels=2, device_map=_device_map(["cpu", "cpu"]))
    assert set(mapped.hf_device_map) == set(SPLIT)
    plain, _ = load_model("tiny-opt", size="1m", num_labels=2)
    runs = [fit(m, sentiment, "mezo", steps=2, lr=1e-3, batch_size=4, eval_every=0, track_memory=False,
                quiet=True, device="cpu") for m in (mapped, plain)]
    np.testing.assert_array_equal(runs[0]["loss"], runs[1]["loss"])
    for (k, a), b in zip(mapped.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="device_map=5 must be 'auto'"):
        load_model("tiny-opt", device_map=5)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_device_map_across_two_gpus_mezo_perturbs_each_parameter_where_it_lives(sentiment):
    from zoedu.models import load_model

    model, _ = load_model("tiny-opt", size="1m", num_labels=2, device_map=_device_map(["cuda:0", "cuda:1"]))
    before = {n: p.device for n, p in model.named_parameters()}
    assert {d.index for d in before.values()} == {0, 1}
    h = fit(model, sentiment, "mezo", steps=3, lr=1e-3, batch_size=4, eval_every=0, quiet=True)
    assert np.isfinite(h["loss"]).all()
    assert {n: p.device for n, p in model.named_parameters()} == before


@pytest.fixture
def one_rank_group(tmp_path):
    """A 1-rank gloo group in this process (for the argument checks), destroyed afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_bad_parallel_choices_name_the_allowed_ones(one_rank_group, sentiment):
    from zoedu.models import load_model

    net, _ = load_model("tiny-opt", size="1m", num_labels=2)
    kw = dict(steps=1, lr=1e-3, batch_size=4, eval_every=0, quiet=True, track_memory=False, device="cpu")
    with pytest.raises(ValueError, match="method 'mezo-accuracy' has no data-parallel step; parallel='data' supports"):
        fit(net, sentiment, "mezo-accuracy", parallel="data", **kw)
    with pytest.raises(ValueError, match="parallel='directions' supports methods mezo"):
        fit(net, sentiment, "adam", parallel="directions", **kw)
    with pytest.raises(ValueError, match="check_every=0 must be a positive integer"):
        distributed.Parallel("data", check_every=0)
    h = fit(net, sentiment, "mezo", parallel="data", **kw)  # one rank: the plain step, bytes counted
    assert h.attrs["world_size"] == 1 and h["comm_bytes"].tolist() == [16]


# --------------------------------------------------------------------------- experiments and figures
def test_communication_table_and_figure():
    from zoedu.experiments.distributed import communication_per_step, payload_bytes
    from zoedu.viz.distributed import communication_figure, processes_figure

    df = communication_per_step([("small", 1_000), ("big", 1_000_000)], world_size=4, bytes_per_element=2)
    row = df.set_index(["model", "method", "parallel"])
    assert row.loc[("big", "mezo", "data"), "payload_bytes"] == 16            # size-free
    assert row.loc[("big", "adam", "data"), "payload_bytes"] == 8 + 2 * 1_000_000
    assert row.loc[("big", "adam", "data"), "wire_bytes"] == pytest.approx(1.5 * (8 + 2_000_000))
    assert payload_bytes("mezo", "directions", 10, directions_per_rank=3) == 48
    with pytest.raises(ValueError, match=r"\(method, parallel\)=\('adam', 'directions'\) is unknown"):
        payload_bytes("adam", "directions", 10)
    with pytest.raises(ValueError, match="world_size=1 must be an integer ≥ 2"):
        communication_per_step([("x", 1)], world_size=1)
    fig = communication_figure(df)
    assert len(fig.data) == df.groupby(["method", "parallel"]).ngroups and fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="y='seconds' is unknown"):
        communication_figure(df.assign(seconds=1.0), y="seconds")
    h = df.assign(step=range(len(df)), loss=1.0)
    assert len(processes_figure({"1": h, "2": h}).data) == 2
