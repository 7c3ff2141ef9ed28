"""Phase-2 (distillation) cost against temporal memory M and ensemble size P.

For each (M, P), one Phase-2 round is timed as the strategy runs it: the P newly returned
teachers' logits are computed once on the distillation pool (``pool_logits``), then ``distill``
trains the core against all M*P cached teachers. For comparison, the naive loop that runs every
teacher forward inside every batch is timed too. Settings are interleaved and repeated; the
ratio to M=1 (same P) is taken within each repeat, and median/min/max over repeats reported.

    python benchmarks/distill_cost.py                  # writes benchmarks/distill_cost.json
    python benchmarks/distill_cost.py --repeats 3 --memory 1 5
"""

from __future__ import annotations

import argparse
import json
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


def one_round(
    memory: int, ensemble: int, args: argparse.Namespace, seed: int, naive: bool
) -> float:
    """Seconds of one Phase-2 round with M=memory edges of P=ensemble teachers each."""
    torch.manual_seed(seed)
    x = torch.randn(args.core_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.core_size,))
    student = build_model(args.model, 10, 3)
    teachers = [build_model(args.model, 10, 3).eval() for _ in range(memory * ensemble)]
    pool = make_distill_pool(x, y, views=args.epochs, augment=True, seed=seed)
    old = pool_logits(teachers[ensemble:], pool) if memory > 1 else None
    started = time.perf_counter()
    if naive:
        naive_distill(student, teachers, x, y, args.epochs, args.batch_size, seed)
    else:
        new = pool_logits(teachers[:ensemble], pool)
        stacked = new if old is None else torch.cat([new, old])
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
    return time.perf_counter() - started


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
    one_round(1, 1, args, seed=-1 % 2**31, naive=False)  # warm-up: allocator, kernels
    for repeat in range(args.repeats):
        for m, p in settings:
            cached[(m, p)].append(one_round(m, p, args, repeat, naive=False))
            if not args.skip_naive and p == 1:
                naive[(m, p)].append(one_round(m, p, args, repeat, naive=True))
            print(
                f"repeat {repeat} M={m} P={p}: cached {cached[(m, p)][-1]:.2f}s"
                + (f", naive {naive[(m, p)][-1]:.2f}s" if naive[(m, p)] else ""),
                flush=True,
            )

    def ratios(times: dict[tuple[int, int], list[float]], m: int, p: int) -> dict[str, float]:
        values = [a / b for a, b in zip(times[(m, p)], times[(1, p)], strict=True)]
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "repeats": len(values),
        }

    rows = []
    for m, p in settings:
        row = {
            "M": m,
            "P": p,
            "teachers": m * p,
            "seconds_median": statistics.median(cached[(m, p)]),
            "seconds_per_epoch_median": statistics.median(cached[(m, p)]) / args.epochs,
            "ratio_to_m1": ratios(cached, m, p),
        }
        if naive[(m, p)]:
            row["naive_seconds_median"] = statistics.median(naive[(m, p)])
            row["naive_ratio_to_m1"] = ratios(naive, m, p)
        rows.append(row)
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}",
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kd_cost_ratio_m5_m1": ratios(cached, 5, 1)
        if (5, 1) in cached and (1, 1) in cached
        else None,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"M={row['M']:2d} P={row['P']} {row['seconds_median']:.2f}s "
            f"x{row['ratio_to_m1']['median']:.2f}"
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
