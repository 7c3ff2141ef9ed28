"""Phase-2 (distillation) cost against temporal memory M and ensemble size P.

For each (M, P), one Phase-2 round is timed as the strategy runs it: the P newly returned
teachers' logits are computed once on the distillation pool (``pool_logits``), then ``distill``
trains the core against all M*P cached teachers. For comparison, the naive loop that runs every
teacher forward inside every batch is timed too. Settings are interleaved and repeated; the
ratio to M=1 (same P) is taken within each repeat, and median/min/max over repeats reported.

    python benchmarks/distill_cost.py                  # writes benchmarks/distill_cost.json
    python benchmarks/distill_cost.py --repeats 3 --memory 1 5

Peak memory is the process's peak RSS during each timed round (``VmHWM``, reset before the
round on Linux), next to the size of the stacked cached teacher logits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from edgekd.datasets import augment_batch
from edgekd.distillation import distill, make_distill_pool, pool_logits
from edgekd.losses import cloned_distillation_loss
from edgekd.models import build_model
from edgekd.training import make_optimizer

HERE = Path(__file__).resolve().parent


def naive_distill(
    student: nn.Module,
    teachers: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
) -> None:
    """The straightforward loop: every teacher forward, every batch, every epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(student, 0.05, 0.9, 5e-4)
    student.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            xb = augment_batch(x[rows], generator)
            with torch.no_grad():
                targets = torch.stack([t(xb) for t in teachers])
            loss = cloned_distillation_loss(student(xb), y[rows], targets, 4.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) on Linux; False where that is impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` (since the last reset) or ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_round(
    memory: int, ensemble: int, args: argparse.Namespace, seed: int, naive: bool
) -> tuple[float, float, float]:
    """One Phase-2 round with M=memory edges of P=ensemble teachers each.

    Returns
    -------
    tuple of float
        Seconds of the round, the process's peak RSS (MB) during the round (``VmHWM`` is reset
        just before it on Linux) and the size (MB) of the stacked cached teacher logits.

    Notes
    -----
    The M-1 older edges' logits were cached in earlier rounds; their values do not change the
    cost of ``distill``, so they are random tensors of the right shape here. Only the naive loop
    needs all M*P teacher models.
    """
    torch.manual_seed(seed)
    x = torch.randn(args.core_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.core_size,))
    student = build_model(args.model, 10, 3)
    count = memory * ensemble if naive else ensemble
    teachers = [build_model(args.model, 10, 3).eval() for _ in range(count)]
    pool = make_distill_pool(x, y, views=args.epochs, augment=True, seed=seed)
    old = torch.randn((memory - 1) * ensemble, len(pool.x), 10) if memory > 1 else None
    _reset_peak_rss()
    started = time.perf_counter()
    logits_mb = 0.0
    if naive:
        naive_distill(student, teachers, x, y, args.epochs, args.batch_size, seed)
    else:
        new = pool_logits(teachers[:ensemble], pool)
        stacked = new if old is None else torch.cat([new, old])
        logits_mb = stacked.numel() * stacked.element_size() / 2**20
        distill(
            student,
            pool,
            stacked,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=0.05,
            temperature=4.0,
            seed=seed,
        )
    return time.perf_counter() - started, _peak_rss_mb(), logits_mb


def main() -> int:
    """Measure and write benchmarks/distill_cost.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memory", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--ensemble", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--core-size", type=int, default=517)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "distill_cost.json")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = [(m, p) for p in args.ensemble for m in args.memory]
    cached: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    naive: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    peak: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    logits_mb: dict[tuple[int, int], float] = {}
    one_round(1, 1, args, seed=-1 % 2**31, naive=False)  # warm-up: allocator, kernels
    for repeat in range(args.repeats):
        for m, p in settings:
            seconds, peak_mb, size_mb = one_round(m, p, args, repeat, naive=False)
            cached[(m, p)].append(seconds)
            peak[(m, p)].append(peak_mb)
            logits_mb[(m, p)] = size_mb
            if not args.skip_naive and p == 1:
                naive[(m, p)].append(one_round(m, p, args, repeat, naive=True)[0])
            print(
                f"repeat {repeat} M={m} P={p}: cached {cached[(m, p)][-1]:.2f}s"
                + (f", naive {naive[(m, p)][-1]:.2f}s" if naive[(m, p)] else ""),
                flush=True,
            )

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "repeats": len(values),
        }

    def ratios(times: dict[tuple[int, int], list[float]], m: int, p: int) -> dict[str, float]:
        return summary([a / b for a, b in zip(times[(m, p)], times[(1, p)], strict=True)])

    rows = []
    for m, p in settings:
        row = {
            "M": m,
            "P": p,
            "teachers": m * p,
            "seconds_median": statistics.median(cached[(m, p)]),
            "seconds_per_epoch_median": statistics.median(cached[(m, p)]) / args.epochs,
            "ratio_to_m1": ratios(cached, m, p),
            "seconds_per_epoch": summary([t / args.epochs for t in cached[(m, p)]]),
            "peak_rss_mb": summary(peak[(m, p)]),
            "teacher_logits_mb": logits_mb[(m, p)],
        }
        if naive[(m, p)]:
            row["naive_seconds_median"] = statistics.median(naive[(m, p)])
            row["naive_ratio_to_m1"] = ratios(naive, m, p)
        rows.append(row)
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}",
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kd_cost_ratio_m5_m1": ratios(cached, 5, 1)
        if (5, 1) in cached and (1, 1) in cached
        else None,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"M={row['M']:2d} P={row['P']} {row['seconds_median']:.2f}s "
            f"x{row['ratio_to_m1']['median']:.2f} peak {row['peak_rss_mb']['median']:.0f} MB"
            + (
                f"  naive {row['naive_seconds_median']:.2f}s "
                f"x{row['naive_ratio_to_m1']['median']:.2f}"
                if "naive_seconds_median" in row
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
