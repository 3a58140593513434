"""What DP-SGD costs per training step, side by side in one run.

For each task (digits-cnn, its DP variants ``digits-cnn-frozen-middle`` and ``digits-cnn-gabor`` (the
default under DP), tabular (its MLP), the
logistic regression ``tabular-logistic`` that tabular trains on a classification table by default, cifar-cnn,
text-transformer, and transfer-mobilenet both end to end
and head-only: ``transfer-mobilenet-full``, ``transfer-mobilenet-head``, full width; dcgan: one
discriminator step, private or not, and its two generator steps; seq2seq-attention on generated dates)
at batch 64 on CPU:
median time per optimizer step (forward, backward, step) without DP, with DP in the mode FedShield
picks for the task (one-pass book-keeping clipping, client/book_keeping.py, for the CNNs, tabular,
the transformer and seq2seq; hooks for dcgan), and, for reference where FedShield picks
another, Opacus' fastest mode (ghost clipping) and its default (hooks). Every process keeps freed
memory mapped as FedShield's training processes do (common/allocator.py). Each
configuration runs in a fresh process (clean peak memory), repeated --repeats times (median of the
per-run medians). Prints one table with the ratios to the non-private step twice: across processes
(``x non-DP``: the DP runs' median over the plain runs') and ``paired``: each DP process also times a
plain twin of the model in alternating blocks, and the column is the median of those in-process ratios,
which the speed differences between processes (up to 25% for the 0.3 ms tabular step) do not reach.

    python benchmarks/dp_overhead.py            # ~30 minutes on 2 cores (all tasks)
    python benchmarks/dp_overhead.py --tasks cifar-cnn,text-transformer
    python benchmarks/dp_overhead.py --references none --repeats 3   # every task, FedShield's mode only
    python benchmarks/dp_overhead.py --tasks transfer-mobilenet-full,transfer-mobilenet-head --steps 10

For transfer-mobilenet the table adds the DP step of the head-only model over the end-to-end one.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

BATCH = 64
MIN_TIMED_S = 5.0  # seconds of timed steps per run, at least (the machine drifts by 20% within minutes)
MAX_STEPS = 5000
TASKS = ("digits-cnn", "digits-cnn-frozen-middle", "digits-cnn-gabor", "tabular", "tabular-logistic", "cifar-cnn",
         "text-transformer", "transfer-mobilenet-full", "transfer-mobilenet-head", "dcgan", "seq2seq-attention")
#: benchmark name -> (task, --model)
VARIANT = {"tabular": ("tabular", "mlp"), "tabular-logistic": ("tabular", "logistic"),
           "digits-cnn-frozen-middle": ("digits-cnn", "frozen-middle"), "digits-cnn-gabor": ("digits-cnn", "gabor"),
           "transfer-mobilenet-full": ("transfer-mobilenet", "full"),
           "transfer-mobilenet-head": ("transfer-mobilenet", "head")}


#: reference runs: Opacus' fastest mode (ghost clipping) and its default (hooks)
REFERENCES = ("ghost", "hooks")


def platform_mode(task_name: str) -> str:
    """The ``dp_mode`` the task declares (what FedShield trains it with)."""
    from fedshield.tasks.registry import get_task

    return get_task(VARIANT.get(task_name, (task_name, ""))[0]).dp_mode


def configs(tasks: list[str], references: tuple[str, ...] = REFERENCES) -> list[tuple[str, str]]:
    """(task, none|platform|ghost|hooks); ghost only beside book-keeping where Opacus runs it, no reference run
    of the platform's own mode, and only the ``references`` asked for."""
    modes = {t: platform_mode(t) for t in tasks}
    ghost = {t for t in tasks if modes[t] == "bk"}
    return [(t, m) for t in tasks for m in ("none", "platform", *references)
            if m in ("none", "platform") or (m != modes[t] and (m == "hooks" or t in ghost))]


def task_inputs(task_name: str, n: int):
    """A schema and n random examples shaped as the task's sites hold them."""
    import torch

    from fedshield.tasks.base import DataSchema

    task_name = VARIANT.get(task_name, (task_name, ""))[0]  # a variant's sites hold its task's data
    if task_name in ("digits-cnn", "dcgan"):
        return DataSchema("classification", (1, 28, 28), 10), torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))
    if task_name in ("cifar-cnn", "transfer-mobilenet"):
        return DataSchema("classification", (3, 32, 32), 10), torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    if task_name == "seq2seq-attention":  # generated dates, as the task's demo sites hold them
        from fedshield.simulations.dates_dataset import generate_dates
        from fedshield.tasks.byte_tokens import VOCAB, source_tensor, target_tensor

        pairs, _ = generate_dates(n)
        return (DataSchema("sequence", (48,), VOCAB), source_tensor(list(pairs[:, 0]), 48),
                target_tensor(list(pairs[:, 1]), 16))
    if task_name == "text-transformer":
        ids = torch.randint(2, 2048, (n, 32))
        ids[torch.rand(n, 32) < 0.3] = 0  # some padding, as short texts have
        ids[:, 0] = 1  # [CLS]
        return DataSchema("classification", (32,), 2), ids, torch.randint(0, 2, (n,))
    return (DataSchema("classification", (30,), 2, tuple(f"f{i}" for i in range(30)), "t"), torch.randn(n, 30),
            torch.randint(0, 2, (n,)))


class OneBatch:
    """One batch as a loader (``dataset`` and ``len`` give the task its expected batch size)."""

    def __init__(self, x, y) -> None:  # type: ignore[no-untyped-def]
        self.batch, self.dataset = (x, y), range(len(x))

    def __len__(self) -> int:
        return 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([self.batch])


class PoissonBatches:
    """Batches of ``x, y`` whose sizes are drawn as DP-SGD's Poisson sampling draws them (each example in with
    probability ``batch / len(x)``), for a plain step fed batches of the private step's sizes."""

    def __init__(self, x, y, batch: int) -> None:  # type: ignore[no-untyped-def]
        import torch

        self.x, self.y, self.rate = x, y, batch / len(x)
        self.generator = torch.Generator().manual_seed(1)

    def __iter__(self):  # type: ignore[no-untyped-def]
        import torch

        for _ in range(len(self.x) // max(1, round(self.rate * len(self.x)))):
            picked = torch.rand(len(self.x), generator=self.generator) < self.rate
            yield self.x[picked], self.y[picked]


def _stepper(task_name: str, mode: str, plain_batches: str = "fixed"):  # type: ignore[no-untyped-def]
    """A fresh model of the task trained in ``mode``: ``(step, opacus mode used)``; ``step()`` runs one timed
    optimizer step on the next batch and returns its wall time in ms. ``plain_batches``: a plain model's
    batches are all of BATCH examples (``fixed``, as a site trains without DP) or of Poisson-drawn sizes
    (``poisson``, as the private step's)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fedshield.client.local_training import make_private
    from fedshield.tasks.base import SiteData, TaskOptions
    from fedshield.tasks.registry import get_task

    name, variant = VARIANT.get(task_name, (task_name, "auto"))
    task = get_task(name)
    schema, x, y = task_inputs(task_name, BATCH * 40)
    site = SiteData(TensorDataset(x, y), TensorDataset(x[:10], y[:10]), schema, None)  # type: ignore[arg-type]
    model = task.build_model(schema, TaskOptions(model=variant))
    model.train()
    part = getattr(task, "private_part", None)  # dcgan: only the discriminator is made private
    trained = part(model) if callable(part) else model
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.05)
    loader = (PoissonBatches(x, y, BATCH) if plain_batches == "poisson" and mode == "none"
              else DataLoader(site.train, batch_size=BATCH, shuffle=True))  # make_private draws its own
    criterion = None
    used = "none"
    private_module = None
    if mode != "none":
        if mode in REFERENCES:
            task.dp_mode = mode  # type: ignore[misc]
        private = make_private(task, site, trained, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0)
        optimizer, loader, criterion, used = private.optimizer, private.loader, private.criterion, private.mode
        if trained is model:
            model = private.model
        else:
            private_module = private.model
    batches = iter(loader)

    def step() -> float:
        nonlocal batches
        try:
            xb, yb = next(batches)
        except StopIteration:
            batches = iter(loader)
            xb, yb = next(batches)
        start = time.perf_counter()
        if callable(part):  # a GAN step: the task's own discriminator step and generator steps
            task.train(model, OneBatch(xb, yb), optimizer, epochs=1, device=torch.device("cpu"),
                       private_module=private_module)
        elif task_name == "seq2seq-attention":  # the task's own batch loss (teacher forcing)
            task.train(model, OneBatch(xb, yb), optimizer, epochs=1, device=torch.device("cpu"),
                       criterion=criterion)
        else:
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = criterion(out, yb) if criterion is not None else task.loss(out, yb)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) * 1000

    return step, used


def worker(task_name: str, mode: str, steps: int, warmup: int, plain_batches: str = "fixed") -> dict:
    """Time ``steps`` optimizer steps after ``warmup`` in this process; report median ms and peak RSS.

    A DP configuration also times a plain twin of the model in the same process, in alternating blocks
    of steps, and reports the ratio of the two medians: the machine's speed differs between processes
    (a 0.25-0.32 ms plain tabular step from one fresh process to the next), and a ratio of steps taken
    in one process, interleaved, does not carry that difference. The peak RSS is then the process's
    with both models (the plain one's few MB of weights more than the private step alone).
    """
    import torch

    from fedshield.common.allocator import retain_freed_memory
    from fedshield.common.kernel_cache import bound_kernel_cache
    from fedshield.tasks.base import TaskOptions
    from fedshield.tasks.registry import get_task

    warnings.simplefilter("ignore")
    retain_freed_memory()  # as every FedShield training process does (train_round), with and without DP
    name, variant = VARIANT.get(task_name, (task_name, "auto"))  # as train_round sets it, before any convolution
    bound_kernel_cache(get_task(name).build_model(task_inputs(task_name, BATCH)[0], TaskOptions(model=variant)), BATCH)
    torch.manual_seed(0)
    step, used = _stepper(task_name, mode, plain_batches)
    twin = _stepper(task_name, "none", plain_batches)[0] if mode != "none" else None
    times: list[float] = []
    plain: list[float] = []
    block = max(1, steps // 6)
    for _ in range(warmup):
        step()
        if twin is not None:
            twin()
    # at least `steps` timed steps and MIN_TIMED_S of timed work: a 0.5 ms tabular step needs hundreds
    # of steps before the median settles (Python's adaptive interpreter and the allocator warm up)
    while len(times) < steps or (sum(times) < MIN_TIMED_S * 1000 and len(times) < MAX_STEPS):
        times.extend(step() for _ in range(block))
        if twin is not None:
            plain.extend(twin() for _ in range(block))
    result = {"task": task_name, "mode": mode, "opacus_mode": used, "median_ms": statistics.median(times),
              "steps": len(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if plain:
        result["paired_ratio"] = result["median_ms"] / statistics.median(plain)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh-process runs per configuration (median)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default: all)")
    parser.add_argument("--references", default=",".join(REFERENCES),
                        help="Opacus modes timed for reference beside FedShield's: ghost,hooks (default), one of "
                             "them, or none (the all-task table in minutes rather than half an hour)")
    parser.add_argument("--plain-batches", choices=("fixed", "poisson"), default="fixed",
                        help="the plain step's batches: all of 64 examples (fixed, as a site trains without DP), or "
                             "of the Poisson-drawn sizes the private step trains on (poisson): glibc's heap grows "
                             "with varying activation sizes, and this separates that from what clipping costs")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks: unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    references = tuple(r.strip() for r in args.references.split(",") if r.strip() and r.strip() != "none")
    wrong = [r for r in references if r not in REFERENCES]
    if wrong:
        parser.error(f"--references: unknown mode {wrong[0]!r}; choose from {', '.join(REFERENCES)} or none")
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps, args.warmup, args.plain_batches)))
        return
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):  # interleave configurations so drift hits all alike
        for task_name, mode in configs(tasks, references):
            out = subprocess.run([sys.executable, __file__, "--worker", task_name, mode, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--plain-batches", args.plain_batches],
                                 capture_output=True, text=True, check=True)
            results.setdefault((task_name, mode), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"DP-SGD step cost on CPU, batch {BATCH}, median of {args.repeats} fresh-process runs x at least "
          f"{args.steps} steps and {MIN_TIMED_S:g} s; plain batches {args.plain_batches}")
    print(f"{'task':<25}{'configuration':<34}{'ms/step':>9}{'x non-DP':>10}{'paired':>8}{'peak RSS MB':>13}")
    for task_name in tasks:
        base = statistics.median(r["median_ms"] for r in results[(task_name, "none")])
        for mode, label in (("none", "no DP"), ("platform", "DP, FedShield ({})"),
                            ("ghost", "DP, Opacus fastest (ghost)"), ("hooks", "DP, Opacus default (hooks)")):
            runs = results.get((task_name, mode))
            if runs is None:
                continue
            ms = statistics.median(r["median_ms"] for r in runs)
            rss = statistics.median(r["peak_rss_mb"] for r in runs)
            paired = (f"{statistics.median(r['paired_ratio'] for r in runs):.2f}" if "paired_ratio" in runs[0]
                      else "1.00")
            print(f"{task_name:<25}{label.format(runs[0]['opacus_mode']):<34}{ms:>9.2f}{ms / base:>10.2f}{paired:>8}"
                  f"{rss:>13.0f}")
    full, head = (results.get((f"transfer-mobilenet-{v}", "platform")) for v in ("full", "head"))
    if full and head:
        ms_full, ms_head = (statistics.median(r["median_ms"] for r in runs) for runs in (full, head))
        print(f"transfer-mobilenet: a DP step of the head-only model takes {ms_head / ms_full:.3f}x the "
              f"end-to-end one ({ms_full / ms_head:.1f}x faster)")


if __name__ == "__main__":
    main()
