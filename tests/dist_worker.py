"""Run by tests/test_distributed.py as one rank of a 2-process gloo group (not a test module).

``python tests/dist_worker.py SCENARIO OUT_DIR`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
set; writes ``OUT_DIR/rank{r}.pt`` with each run's History and final weights.
"""

import sys

import torch

torch.set_num_threads(1)

from zoedu import distributed  # noqa: E402
from zoedu.models import load_model  # noqa: E402
from zoedu.tasks import load_task  # noqa: E402
from zoedu.train import fit, register_method  # noqa: E402

#: (name, method, fit options) of the runs compared with single-process references
RUNS = [
    ("mezo", "mezo", dict(lr=1e-3, eps=1e-3, parallel="data")),
    ("addax", "addax", dict(lr=1e-2, eps=1e-3, k0=4, k1=6, parallel="data")),
    ("directions", "mezo", dict(lr=1e-3, eps=1e-3, parallel="directions")),
    ("mezo-blocks", "mezo", dict(lr=1e-3, eps=1e-3, parallel="data", blocks="layers")),
    ("adam", "adam", dict(lr=1e-3, parallel="data")),
    ("ipsgd", "ipsgd", dict(lr=1e-2, parallel="data")),
    ("pike", "sgd", dict(lr=3e-2, mixer="pike", parallel="data")),
    ("semi_dp", "semi_dp", dict(lr=1e-1, beta=0.5, noise_multiplier=1.0, public_fraction=0.1, max_grad_norm=0.5,
                                parallel="data")),
]
STEPS, BATCH = 4, 8


def setup():
    task = load_task("sentiment", n_train=64, n_validation=16, max_length=32)
    return task


def corpus():
    return load_task("multidomain", n_train={"prose": 12, "code": 12, "rot13": 8, "arithmetic": 6}, n_validation=2,
                     max_length=16)


def model(name="tiny-opt"):
    if name == "pike":
        net, _ = load_model("tiny-gpt2", size="1m", seed=0)
        return net
    net, _ = load_model("tiny-opt", size="1m", num_labels=2, seed=0)
    return net


def fresh(name, options):
    """The run's options, with a new PiKE (updating every 2 steps) for the mixer run."""
    options = dict(options)
    if name == "pike":
        from zoedu.mixing import PiKE

        options["mixer"] = PiKE(4, update_every=2)
    return options


def run(name, method, options, task):
    options = fresh(name, options)
    if name == "pike":
        task = corpus()
    net = model(name)
    h = fit(net, task, method, steps=STEPS, batch_size=BATCH, seed=0, device="cpu", eval_every=0,
            track_memory=False, quiet=True, **options)
    return {"history": h, "attrs": dict(h.attrs), "weights": {k: v.clone() for k, v in net.state_dict().items()}}


def main(scenario: str, out: str) -> None:
    distributed.init(timeout=30)
    r = distributed.rank()
    task = setup()
    results = {}
    if scenario == "equal":
        for name, method, options in RUNS:
            results[name] = run(name, method, options, task)
    elif scenario == "raise":  # rank 1 raises inside its third step; rank 0 must not hang
        calls = {"n": 0}
        real = task.loss

        def loss(model, batch):
            calls["n"] += 1
            if r == 1 and calls["n"] == 5:
                raise RuntimeError("rank 1 fails on purpose")
            return real(model, batch)

        task.loss = loss
        run("mezo", "mezo", dict(lr=1e-3, parallel="data"), task)
    elif scenario == "diverge":  # rank 1 nudges a weight after step 1: the checksum names step 2
        from zoedu.train import FirstOrderRunner

        def make(ctx):
            opt = torch.optim.SGD(ctx.params(), lr=1e-3)
            inner = FirstOrderRunner(ctx, opt)

            class Nudged:
                optimizer = opt

                def step(self, step):
                    out = inner.step(step)
                    if r == 1 and step == 1:
                        with torch.no_grad():
                            ctx.params()[0].view(-1)[0] += 1e-3
                    return out
            return Nudged()

        register_method("nudged", make)
        run("nudged", "nudged", dict(lr=1e-3, parallel=distributed.Parallel("replicate", check_every=2)), task)
    torch.save(results, f"{out}/rank{r}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
