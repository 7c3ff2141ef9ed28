"""Torch threads per virtual client follow its CPU share, and what oversubscription costs.

Part 1 (share): Flower's Ray backend creates each virtual client as a Ray actor with
``options(num_cpus=client-resources-num-cpus)``; Ray then sets ``OMP_NUM_THREADS`` in that actor
to its CPU share. This starts a private local Ray instance (``address="local"``, 127.0.0.1,
2 CPUs) and, for ``num_cpus`` 1 and 2, creates such an actor that reports what the edgekd
ClientApp would do: ``OMP_NUM_THREADS``, :func:`edgekd.training.cpu_share_threads` and the
torch threads after :func:`edgekd.training.set_torch_threads` with ``client-threads = 0``, plus
torch's default before it. The driver's own ``OMP_NUM_THREADS`` is removed first so that only
Ray decides.

Part 2 (cost of getting it wrong): two processes (two virtual clients on a 2-core machine) train
the same small model at the same time, with 1 torch thread each (threads = CPU share) and with
2 or 4 threads each (oversubscribed). The wall time until both finish is compared within each
repeat; settings are interleaved.

Usage::

    python benchmarks/threads.py                    # writes benchmarks/threads.json
    python benchmarks/threads.py --repeats 1 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    HERE,
    PYTHON,
    ROOT,
    bench_env,
    machine,
    stop_on_sigterm,
    summary,
    today,
    write_json,
)


def actor_report() -> dict[str, Any]:
    """What a virtual client process sees: its CPU share and torch threads (runs in Ray)."""
    import torch

    default = torch.get_num_threads()
    from edgekd.training import cpu_share_threads, set_torch_threads

    return {
        "pid": os.getpid(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_default_threads": default,
        "cpu_share_threads": cpu_share_threads(),
        "torch_threads_after_set_torch_threads_0": set_torch_threads(0),
    }


def share_check(cpu_options: list[int]) -> list[dict[str, Any]]:
    """Part 1: one Ray actor per ``num_cpus`` value on a private 2-CPU Ray instance."""
    os.environ.pop("OMP_NUM_THREADS", None)
    os.environ["RAY_ADDRESS"] = ""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node address 127.0.0.1
    import ray  # after the environment: Ray reads it on import

    pythonpath = os.pathsep.join([str(ROOT), *sys.path])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        logging_level="WARNING",
    )
    try:

        @ray.remote
        class Probe:
            """Stands in for Flower's ClientAppActor: same resource options."""

            def report(self) -> dict[str, Any]:
                return actor_report()

        rows = []
        for cpus in cpu_options:
            actor = Probe.options(num_cpus=cpus).remote()  # type: ignore[attr-defined]
            report = ray.get(actor.report.remote())
            report["num_cpus"] = cpus
            report["actors_on_2_cores"] = 2 // cpus
            rows.append(report)
            ray.kill(actor)
        return rows
    finally:
        ray.shutdown()


def worker(threads: int, steps: int, seed: int) -> float:
    """Train resnet8 for ``steps`` batches with ``threads`` torch threads; return seconds."""
    import torch

    from edgekd.models import build_model
    from edgekd.training import train_supervised

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps * 32, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (steps * 32,), generator=generator)
    model = build_model("resnet8", 10, 3)
    started = time.perf_counter()
    train_supervised(model, x, y, epochs=1, batch_size=32, lr=0.05, seed=seed)
    return time.perf_counter() - started


def pair(threads: int, steps: int, processes: int) -> dict[str, Any]:
    """Run ``processes`` trainers at once with ``threads`` threads each; time until all end."""
    command = [PYTHON, str(Path(__file__).resolve()), "--worker", str(threads), "--steps"]
    env = bench_env(threads)
    started = time.monotonic()
    children = [
        subprocess.Popen(
            [*command, str(steps), "--seed", str(i)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    train = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"worker failed with {child.returncode}")
        train.append(float(out.strip().splitlines()[-1]))
    return {"wall_s": time.monotonic() - started, "train_s": train}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="batches of 32 per process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=HERE / "threads.json")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(worker(args.worker, args.steps, args.seed), flush=True)
        return 0
    share = share_check([1, 2])
    for row in share:
        print(
            f"num_cpus={row['num_cpus']}: OMP_NUM_THREADS={row['OMP_NUM_THREADS']}, torch "
            f"threads {row['torch_threads_after_set_torch_threads_0']}",
            flush=True,
        )
    runs: dict[int, list[dict[str, Any]]] = {t: [] for t in args.threads}
    for repeat in range(args.repeats):
        shift = repeat % len(args.threads)
        for threads in args.threads[shift:] + args.threads[:shift]:
            runs[threads].append(pair(threads, args.steps, args.processes))
            print(
                f"repeat {repeat}: {args.processes} x {threads} thread(s): "
                f"{runs[threads][-1]['wall_s']:.1f}s",
                flush=True,
            )
    base = min(args.threads)
    rows = []
    for threads in args.threads:
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs[threads], runs[base], strict=True)]
        rows.append(
            {
                "processes": args.processes,
                "threads_per_process": threads,
                "total_threads": threads * args.processes,
                "wall_s": summary([r["wall_s"] for r in runs[threads]]),
                "slowdown_vs_share": summary(ratios),
            }
        )
    result = {
        "command": "python benchmarks/threads.py " + " ".join(sys.argv[1:]),
        "date": today(),
        "machine": machine(),
        "share": share,
        "share_follows_cpus": all(
            r["torch_threads_after_set_torch_threads_0"] == r["num_cpus"] for r in share
        ),
        "oversubscription": {
            "model": "resnet8",
            "batch_size": 32,
            "steps_per_process": args.steps,
            "rows": rows,
            "runs": {str(t): runs[t] for t in args.threads},
        },
    }
    write_json(args.out, result)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
