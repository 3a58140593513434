"""Step time and peak memory of one task's plain and private optimizer step on a device (gpu_check.py, part 1).

A step is the task's own ``train`` on one batch, as client/local_training.py runs it: the batch comes
from the CPU (as a site's loader gives it) and the task moves it to the device; under DP the model,
optimizer and loss come from :func:`fedshield.client.local_training.make_private` in the task's
``dp_mode``. Plain and private steps train the same network (the one a private run resolves ``auto``
to). The clock is read after ``torch.cuda.synchronize()``, so a step's time includes its kernels.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from dp_overhead import OneBatch, task_inputs  # shaped inputs of every built-in task (do not duplicate them)
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class StepFigures:
    """One task at one batch size: median ms per step and peak device memory (MiB; None on CPU)."""

    task: str
    model: str
    dp_mode: str
    batch: int
    plain_ms: float
    private_ms: float
    plain_peak_mib: float | None
    private_peak_mib: float | None

    @property
    def ratio(self) -> float:
        """A private step's time over a plain one's."""
        return self.private_ms / self.plain_ms

    def as_json(self) -> dict[str, object]:
        """The figures and the ratio, for the JSON report."""
        return {**asdict(self), "ratio": self.ratio}


def dp_model_name(task_name: str) -> str:
    """The network a private run without ``--init-weights`` trains (``--model auto`` resolved)."""
    from fedshield.tasks.init_weights import resolve_model
    from fedshield.tasks.registry import get_task

    return resolve_model(get_task(task_name), "auto", pretrained=False, dp=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stepper(task_name: str, batch: int, device: torch.device, private: bool,
            *, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, lr: float = 0.05,
            initial: dict[str, torch.Tensor] | None = None) -> tuple[Callable[[], None], str, torch.nn.Module]:
    """``(step, opacus mode, model)``: ``step()`` trains the task's fresh model (from ``initial`` weights when
    given) one optimizer step (SGD, no momentum) on one batch of ``batch`` examples."""
    from fedshield.client.local_training import make_private
    from fedshield.tasks.base import SiteData, TaskOptions
    from fedshield.tasks.registry import get_task

    task = get_task(task_name)
    schema, x, y = task_inputs(task_name, batch * 8)
    site = SiteData(TensorDataset(x, y), TensorDataset(x[:10], y[:10]), schema, None)  # type: ignore[arg-type]
    model = task.build_model(schema, TaskOptions(model=dp_model_name(task_name), private=True))
    if initial is not None:
        model.load_state_dict(initial)
    model.to(device)
    model.train()
    part = getattr(task, "private_part", None)  # dcgan: only the discriminator is made private
    trained = part(model) if callable(part) else model
    optimizer = torch.optim.SGD(trained.parameters(), lr=lr)
    one = OneBatch(x[:batch], y[:batch])
    if not private:
        return (lambda: task.train(model, one, optimizer, epochs=1, device=device)), "none", model  # type: ignore[arg-type]
    loader = DataLoader(site.train, batch_size=batch)
    dp = make_private(task, site, trained, optimizer, loader, noise_multiplier=noise_multiplier,
                      max_grad_norm=max_grad_norm)
    extra = {} if trained is model else {"private_module": dp.model}

    def step() -> None:
        task.train(model if extra else dp.model, one, dp.optimizer, epochs=1, device=device,  # type: ignore[arg-type]
                   criterion=dp.criterion, **extra)

    return step, dp.mode, model


def _time(task_name: str, batch: int, device: torch.device, private: bool, steps: int,
          warmup: int) -> tuple[float, float | None, str]:
    """Median ms per step, peak device memory (MiB) and the Opacus mode of one fresh configuration."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    step, mode, _ = stepper(task_name, batch, device, private)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure_mode and full-backward-hook notices
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak, mode


def measure(task_name: str, batch: int, device: torch.device, steps: int, warmup: int = 3) -> StepFigures:
    """Plain, then private, in this process (fresh model each; peak memory reset in between)."""
    plain_ms, plain_peak, _ = _time(task_name, batch, device, False, steps, warmup)
    private_ms, private_peak, mode = _time(task_name, batch, device, True, steps, warmup)
    return StepFigures(task_name, dp_model_name(task_name), mode, batch, plain_ms, private_ms, plain_peak,
                       private_peak)
