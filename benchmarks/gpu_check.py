"""GPU check: FedShield on one device, in one short run (issue 30; docs/performance.md, "GPU check").

1. Per built-in task: a plain and a private (DP-SGD in the task's ``dp_mode``) optimizer step, median ms and
   peak device memory (``torch.cuda.max_memory_allocated``), at batch 64 and 256 (benchmarks/gpu_steps.py).
2. One clipped update with the noise off on the CPU and on the device: the max abs difference of the
   clipped gradient sums (benchmarks/gpu_clipping.py).
3. A two-site ``fl-client join --device D`` federation on loopback, 2 rounds of digits-cnn under DP
   (benchmarks/gpu_federation.py).

Writes ``gpu_check.txt`` (a table) and ``gpu_check.json`` under ``--out``; about 5 minutes on a GPU.
Every part runs with ``--device cpu`` too (``--quick``: digits-cnn at batch 64, few steps: the test).

    python benchmarks/gpu_check.py --device cuda --out /tmp/gpu
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from source_tree import ensure_fedshield

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (64, 256)
CLIP_TASKS = ("digits-cnn", "text-transformer")  # book-keeping and Opacus' hooks


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.txt and gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="digits-cnn only, batch 64, 5 steps (the test)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--tasks", default="", help="comma-separated tasks (default: every built-in task)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: steps, clipping, federation")
    return parser.parse_args()


def _tasks(wanted: str, quick: bool) -> tuple[list[str], dict[str, str]]:
    """The tasks to time, and those left out with the reason."""
    from fedshield.tasks.registry import available_tasks, builtin_task_names

    builtin = builtin_task_names()
    names = [t.strip() for t in wanted.split(",") if t.strip()] or (["digits-cnn"] if quick else sorted(builtin))
    skipped = {}
    for name in names:
        if name not in available_tasks():
            skipped[name] = "does not load here (see the warning above)"
        elif name not in builtin:
            skipped[name] = "a plugin task: the benchmark has generated inputs for built-in tasks only"
    return [n for n in names if n not in skipped], skipped


def _steps(tasks: list[str], batches: tuple[int, ...], device: torch.device,
           steps: int) -> tuple[list[dict[str, object]], list[str]]:
    """Each task at each batch size: the JSON rows and the table's lines."""
    from gpu_steps import measure

    rows: list[dict[str, object]] = []
    lines = [f"{'task':<20}{'model':<14}{'DP mode':<9}{'batch':>6}{'plain ms':>10}{'DP ms':>10}{'DP/plain':>9}"
                 f"{'plain MiB':>11}{'DP MiB':>10}"]
    for task in tasks:
        for batch in batches:
            try:
                fig = measure(task, batch, device, steps)
            except Exception as exc:  # one task that fails on the device must not hide the others
                rows.append({"task": task, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500]})
                lines.append(f"{task:<20}batch {batch}: FAILED {type(exc).__name__}: {str(exc)[:150]}")
                continue
            rows.append(fig.as_json())
            mib = ["-" if m is None else f"{m:.0f}" for m in (fig.plain_peak_mib, fig.private_peak_mib)]
            lines.append(f"{task:<20}{fig.model:<14}{fig.dp_mode:<9}{batch:>6}{fig.plain_ms:>10.2f}{fig.private_ms:>10.2f}"
                         f"{fig.ratio:>9.2f}{mib[0]:>11}{mib[1]:>10}")
            print(lines[-1], flush=True)
    return rows, lines


def main() -> None:
    args = _arguments()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: --device cuda: no CUDA GPU is visible here; use --device cpu", file=sys.stderr)
        sys.exit(2)
    ensure_fedshield(ROOT)
    from fedshield.common.allocator import retain_freed_memory

    retain_freed_memory()  # as every FedShield training process does (client/local_training.py)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report: dict[str, object] = {"device": args.device, "device_name": name, "torch": torch.__version__,
                                 "cuda": torch.version.cuda, "python": platform.python_version(), "quick": args.quick}
    lines = [f"FedShield GPU check on {args.device} ({name}), torch {torch.__version__}, "
             f"Python {platform.python_version()}{', --quick' if args.quick else ''}"]
    if "steps" not in skip:
        tasks, skipped = _tasks(args.tasks, args.quick)
        steps = 5 if args.quick else args.steps
        lines.append(f"\n1. Optimizer step, plain vs DP-SGD (median of {steps} steps after 3 warm-up; "
                     "peak device memory)")
        rows, table = _steps(tasks, BATCHES[:1] if args.quick else BATCHES, device, steps)
        lines += table + [f"{t:<20}skipped: {why}" for t, why in skipped.items()]
        report["steps"], report["skipped_tasks"] = rows, skipped
    if "clipping" not in skip:
        from gpu_clipping import compare

        clips = [compare(t, 64, device) for t in (CLIP_TASKS[:1] if args.quick else CLIP_TASKS)]
        report["clipping"] = clips
        lines.append(f"\n2. One clipped update, noise off, CPU vs {args.device} (TF32 off)")
        lines += [f"{c['task']:<20}{c['dp_mode']:<7} max |diff| {c['max_abs_diff']:.3e} of max |sum| "
                  f"{c['max_abs']:.3e}: relative {c['relative']:.2e}" for c in clips]
    if "federation" not in skip:
        from gpu_federation import federate

        with tempfile.TemporaryDirectory(prefix="gpu-check-fed-") as work:
            fed = federate(Path(work), args.device)
        report["federation"] = fed
        lines.append(f"\n3. Two sites, digits-cnn under DP, 2 rounds, fl-client join --device {args.device}")
        secs = ", ".join(f"{s:.1f}" for s in fed.get("round_seconds", []))  # type: ignore[attr-defined]
        lines.append(f"status {fed['status']}, {fed.get('rounds_finished', 0)} rounds finished, round times (s): "
                     f"{secs or '-'}; total {fed.get('total_seconds', 0):.1f} s")
        lines += [f"{site}: trained on {', '.join(f'round {r}: {d}' for r, d in sorted(on.items())) or 'nothing'}"
                  for site, on in fed.get("trained_on", {}).items()]  # type: ignore[attr-defined]
    report["seconds"] = time.perf_counter() - started
    lines.append(f"\nwhole check: {report['seconds']:.0f} s")
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
