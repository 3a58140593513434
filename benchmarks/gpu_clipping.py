"""The same clipped DP-SGD update on the CPU and on the device (gpu_check.py, part 2).

One private step with the noise off (σ = 0), the same initial weights and the same batch on both devices,
through :func:`gpu_steps.stepper` (the task's ``dp_mode``, as client/local_training.py makes it private).
With SGD at learning rate 1 and no momentum the weights move by the clipped gradient sum over E[B] (here
the batch size; Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1), so
``E[B] · (w₀ − w₁)`` is the clipped sum ``Σ_i g_i · min(1, C/‖g_i‖)``. The clip bound C = 0.1 makes clipping
bind. TF32 is off during the comparison (float32 matmuls and convolutions on both devices); what is left
is float32 rounding in another summation order, about 1e-6 to 1e-5 of the largest coordinate.
"""

from __future__ import annotations

import warnings

import torch
from dp_overhead import task_inputs
from gpu_steps import dp_model_name, stepper

MAX_GRAD_NORM = 0.1


def _clipped_sum(task_name: str, batch: int, device: torch.device,
                 initial: dict[str, torch.Tensor]) -> tuple[torch.Tensor, str]:
    """The clipped per-sample gradient sum of one noiseless private step from ``initial`` on ``device``,
    flattened over the parameters (float64, on the CPU), and the Opacus mode that computed it."""
    torch.manual_seed(0)
    step, mode, model = stepper(task_name, batch, device, True, noise_multiplier=0.0, max_grad_norm=MAX_GRAD_NORM,
                                lr=1.0, initial=initial)
    for layer in model.modules():  # the CPU's and the GPU's generators draw different dropout masks
        if isinstance(layer, torch.nn.modules.dropout._DropoutNd):
            layer.p = 0.0
    before = [p.detach().double().cpu() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step()
    after = [p.detach().double().cpu() for p in model.parameters()]
    return torch.cat([(b - a).flatten() for b, a in zip(before, after, strict=True)]) * batch, mode


def compare(task_name: str, batch: int, device: torch.device) -> dict[str, object]:
    """Max abs difference of the clipped sums on the CPU and on ``device``, absolute and relative to the
    largest coordinate."""
    from fedshield.tasks.base import TaskOptions
    from fedshield.tasks.registry import get_task

    torch.manual_seed(0)
    schema = task_inputs(task_name, 1)[0]
    initial = get_task(task_name).build_model(schema, TaskOptions(model=dp_model_name(task_name), private=True))
    state = {k: v.detach().clone() for k, v in initial.state_dict().items()}
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        on_cpu, mode = _clipped_sum(task_name, batch, torch.device("cpu"), state)
        on_device, _ = _clipped_sum(task_name, batch, device, state)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    diff = float((on_cpu - on_device).abs().max())
    scale = float(on_cpu.abs().max())
    return {"task": task_name, "dp_mode": mode, "batch": batch, "max_grad_norm": MAX_GRAD_NORM,
            "max_abs_diff": diff, "max_abs": scale, "relative": diff / scale if scale else 0.0,
            "tf32": False}
