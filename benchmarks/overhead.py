"""Framework overhead: one cloned-distillation experiment through Flower's simulation engine
(Ray) against the same experiment as a plain in-process loop.

(a) ``python -m edgekd.launch`` runs the experiment with ``flwr run`` on a private SuperLink:
    ServerApp, Ray actors as virtual clients, real messages.
(b) ``--raw-loop`` runs the same experiment in one process with no Flower message: Phase 0,
    then per round the edge's ensemble is trained with :func:`edgekd.training.train_supervised`
    (the seeds and settings the ClientApp would use) and Phase 2 is the strategy's own
    ``_distill_round``, then the core is evaluated on the test split.

Both are fresh processes timed from start to exit (the plain loop in its own session, as the
SuperLink tree of (a) is: one CPU-share group each under the kernel's autogroup scheduling),
with one torch thread everywhere
(``OMP_NUM_THREADS=1``; each virtual client gets 1 CPU), the same seed and the same
overrides, so they train the same models (the final test accuracies are compared). Each repeat
runs both, in alternating order; the ratio (a)/(b) is taken within a repeat.

Where the difference goes, from (a)'s ``metrics.json`` (``elapsed-s`` per round from the
ServerApp's clock, ``uplink-seconds`` from sending the train message to handling its reply)
and (b)'s own timings:

- start-up: everything outside the experiment loop (SuperLink, ``flwr run``, ServerApp
  process, data loading, Ray shutdown; for (b) interpreter start and data loading);
- first round: mapping partitions to nodes (one ``whoami`` query per node, Ray actor start);
- per round: the steady-state difference of round times (rounds >= 2);
- per message: ``uplink-seconds`` of (a) minus the edge training time of (b).

Usage::

    python benchmarks/overhead.py        # CEM reproduction profile, 3 repeats -> overhead.json
    python benchmarks/overhead.py --short --out benchmarks/overhead_short.json
                                         # a 3-round, 1-epoch cut of it: start-up dominates
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HERE,
    PYTHON,
    ROOT,
    bench_env,
    flat_overrides,
    machine,
    run_timed,
    stop_on_sigterm,
    summary,
    today,
    write_json,
)

PROCESS_STARTED = time.monotonic()

# The CPU-scale reproduction profile itself (results/cloned_distillation), unshortened.
PROFILES = [
    "simulations/cloned-distillation/base.toml",
    "simulations/cloned-distillation/CEM.toml",
]
OVERRIDE = ""
SHORT_OVERRIDE = (
    "num-server-rounds=3 local-epochs=1 cd-core-epochs=1 cd-distill-epochs=1 "
    "cd-distill-views=1 cd-ensemble-size=2"
)


def raw_loop(run_config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run the cloned-distillation experiment as a plain loop; return its timings.

    Parameters
    ----------
    run_config : dict
        The merged run config (``[tool.flwr.app.config]`` plus overrides).
    out_dir : Path
        Receives the files the ServerApp would write before training (``prepare_run``).

    Returns
    -------
    dict
        ``loop_s`` (Phase 0 and all rounds), ``phase0_s``, per-round ``rounds`` (``round_s``,
        ``edge_s``, ``distill_s``, ``test_acc``) and ``final_test_acc``.
    """
    from edgekd.clients.app import LocalTrainConfig
    from edgekd.experiment import build_experiment_model, client_data, test_data
    from edgekd.runner import prepare_run
    from edgekd.strategies.cloned_distillation import (
        ClonedDistillation,
        ClonedDistillationConfig,
    )
    from edgekd.training import evaluate, set_torch_threads, train_supervised

    cfg, _recorder = prepare_run(run_config, out_dir)
    set_torch_threads(0)
    cd = ClonedDistillationConfig.from_run_config(run_config)
    if cd.edge_init != "clone":
        raise ValueError(f"the raw loop implements cloned edges only, got {cd.edge_init!r}")
    strategy = ClonedDistillation(cfg, cd)
    test = test_data(cfg)
    evaluator = build_experiment_model(cfg, seed=cfg.seed)
    started = time.monotonic()
    strategy.phase0()
    phase0 = time.monotonic() - started
    evaluator.load_state_dict(strategy.model.state_dict(), strict=True)
    initial = evaluate(evaluator, test.x, test.y)
    # round 0 is the initial central evaluation, as in Flower's Strategy.start
    rounds: list[dict[str, Any]] = [
        {"round": 0, "elapsed_s": time.monotonic() - started, "test_acc": initial.accuracy}
    ]
    for server_round in range(1, cfg.num_server_rounds + 1):
        edge = strategy.edge_for_round(server_round)
        strategy._current_edge = edge
        state = copy.deepcopy(strategy.model.state_dict())
        edge_started = time.monotonic()
        data = client_data(cfg, edge)
        message_config = {
            "server-round": server_round,
            "ensemble-size": cd.ensemble_size,
            "init": "received",
        }
        local = LocalTrainConfig.from_message(message_config, cfg, edge)
        flip = int(data.x.shape[-1]) >= 16
        teachers = []
        for member in range(local.ensemble_size):
            model = build_experiment_model(cfg)
            model.load_state_dict(state, strict=True)
            train_supervised(
                model,
                data.x,
                data.y,
                epochs=local.epochs,
                batch_size=local.batch_size,
                lr=local.lr,
                momentum=local.momentum,
                weight_decay=local.weight_decay,
                seed=local.seed + 7_919 * member,
                augment=cfg.augment,
                padding=data.padding,
                flip=flip,
                lr_schedule=local.lr_schedule,
            )
            model.eval()
            teachers.append(model)
        edge_s = time.monotonic() - edge_started
        metrics = strategy._distill_round(server_round, edge, teachers)
        evaluator.load_state_dict(strategy.model.state_dict(), strict=True)
        result = evaluate(evaluator, test.x, test.y)
        elapsed = time.monotonic() - started
        rounds.append(
            {
                "round": server_round,
                "edge": edge,
                "elapsed_s": elapsed,
                "edge_s": edge_s,
                "distill_s": float(metrics.get("distill-seconds", 0.0)),
                "test_acc": result.accuracy,
            }
        )
        print(
            f"raw loop: round {server_round} edge {edge} test-acc {result.accuracy:.4f} "
            f"({elapsed:.1f}s)",
            flush=True,
        )
    _round_times(rounds)
    return {
        "phase0_s": phase0,
        "loop_s": time.monotonic() - started,
        "rounds": rounds,
        "final_test_acc": rounds[-1]["test_acc"],
    }


def _round_times(rounds: list[dict[str, Any]]) -> None:
    """Add ``round_s`` (time since the previous row; row 0 since the loop began) in place."""
    previous = 0.0
    for row in rounds:
        row["round_s"] = row["elapsed_s"] - previous
        previous = row["elapsed_s"]


def _raw_main(args: argparse.Namespace) -> int:
    from edgekd.launch import PATH_KEYS, effective_run_config

    config = effective_run_config(ROOT, args.run_config)
    for key in PATH_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value:
            config[key] = str(Path(value).expanduser().resolve())
    imported = time.monotonic() - PROCESS_STARTED
    result = raw_loop(config, Path(config["output-dir"]) / "raw")
    result["imports_s"] = imported
    write_json(args.raw_out, result)
    return 0


def _simulation_run(overrides: list[str], work: Path) -> dict[str, Any]:
    out = work / "sim"
    flat = flat_overrides([*overrides, f"output-dir='{out}'"])
    command = [PYTHON, "-m", "edgekd.launch", str(ROOT), "--run-config", flat]
    run = run_timed(command, env=bench_env(1), sample_memory=True)
    if run.returncode != 0:
        raise RuntimeError(f"simulation run failed ({run.returncode}):\n{run.text()[-4000:]}")
    metrics_files = sorted(out.glob("*/metrics.json"))
    if not metrics_files:
        raise RuntimeError(f"no metrics.json under {out}:\n{run.text()[-4000:]}")
    rows = json.loads(metrics_files[-1].read_text())
    rounds = [
        {
            "round": int(row["round"]),
            "edge": int(row.get("edge", -1)),
            "elapsed_s": float(row["elapsed-s"]),
            "uplink_s": float(row.get("uplink-seconds", float("nan"))),
            "distill_s": float(row.get("distill-seconds", float("nan"))),
            "test_acc": float(row["test-acc"]),
        }
        for row in rows
    ]
    _round_times(rounds)
    phase0 = _phase0_seconds(run.text())
    return {
        "wall_s": run.wall_s,
        "loop_s": rounds[-1]["elapsed_s"],
        "phase0_s": phase0,
        "rounds": rounds,
        "final_test_acc": rounds[-1]["test_acc"],
        "memory": run.memory,
    }


def _phase0_seconds(text: str) -> float:
    """``Phase 0 done in X s`` from the ServerApp's log (NaN when the line is missing)."""
    for line in text.splitlines():
        if "Phase 0 done in" in line:
            return float(line.split("Phase 0 done in", 1)[1].split("s", 1)[0])
    return float("nan")


def _raw_run(overrides: list[str], work: Path) -> dict[str, Any]:
    out_json = work / "raw.json"
    flat = flat_overrides([*overrides, f"output-dir='{work / 'rawout'}'"])
    command = [PYTHON, str(Path(__file__).resolve()), "--raw-loop", "--raw-out", str(out_json)]
    command += ["--run-config", flat]
    # own session, like the SuperLink tree of (a): one CPU-share group each under autogroup
    run = run_timed(command, env=bench_env(1), sample_memory=True, new_session=True)
    if run.returncode != 0:
        raise RuntimeError(f"raw loop failed ({run.returncode}):\n{run.text()[-4000:]}")
    result = json.loads(out_json.read_text())
    result["wall_s"] = run.wall_s
    result["memory"] = run.memory
    return result


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def breakdown(sim: dict[str, Any], raw: dict[str, Any]) -> dict[str, float]:
    """Where the extra wall time of the simulation goes, in seconds (one repeat).

    Rows are aligned by round: row 0 is Phase 0 plus the initial evaluation, row 1 the first
    round (with the partition-to-node mapping in the simulation), rows >= 2 steady rounds.
    """
    if [r["round"] for r in sim["rounds"]] != [r["round"] for r in raw["rounds"]]:
        raise ValueError("the two runs did not record the same rounds")
    steady = range(2, len(sim["rounds"]))
    sim_rounds, raw_rounds = sim["rounds"], raw["rounds"]
    per_round = [sim_rounds[i]["round_s"] - raw_rounds[i]["round_s"] for i in steady]
    per_message = [sim_rounds[i]["uplink_s"] - raw_rounds[i]["edge_s"] for i in steady]
    return {
        "total_extra_s": sim["wall_s"] - raw["wall_s"],
        "startup_and_teardown_extra_s": (sim["wall_s"] - sim["loop_s"])
        - (raw["wall_s"] - raw["loop_s"]),
        "sim_outside_loop_s": sim["wall_s"] - sim["loop_s"],
        "raw_outside_loop_s": raw["wall_s"] - raw["loop_s"],
        "round0_extra_s": sim_rounds[0]["round_s"] - raw_rounds[0]["round_s"],
        "first_round_extra_s": sim_rounds[1]["round_s"] - raw_rounds[1]["round_s"],
        "per_round_extra_s": _median(per_round),
        "per_message_extra_s": _median(per_message),
        "steady_round_ratio": _median(
            [sim_rounds[i]["round_s"] / raw_rounds[i]["round_s"] for i in steady]
        ),
        "phase0_sim_s": sim["phase0_s"],
        "phase0_raw_s": raw["phase0_s"],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile",
        nargs="+",
        default=PROFILES,
        help="run-config TOML files of the experiment, merged in order",
    )
    parser.add_argument(
        "--override", default=OVERRIDE, help="run-config overrides applied to the profile"
    )
    parser.add_argument(
        "--short", action="store_true", help=f"shorten the profile with {SHORT_OVERRIDE!r}"
    )
    parser.add_argument("--out", type=Path, default=HERE / "overhead.json")
    parser.add_argument("--raw-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raw-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-config", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_loop:
        return _raw_main(args)
    if args.short:
        args.override = f"{SHORT_OVERRIDE} {args.override}".strip()
    overrides = [*args.profile, args.override, "seed=0"]
    repeats = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="edgekd-overhead-") as tmp:
            work = Path(tmp)
            order = ("sim", "raw") if repeat % 2 == 0 else ("raw", "sim")
            results: dict[str, dict[str, Any]] = {}
            for kind in order:
                run = _simulation_run if kind == "sim" else _raw_run
                results[kind] = run(overrides, work)
                print(f"repeat {repeat} {kind}: {results[kind]['wall_s']:.1f}s", flush=True)
        sim, raw = results["sim"], results["raw"]
        repeats.append(
            {
                "order": list(order),
                "sim": sim,
                "raw": raw,
                "ratio": sim["wall_s"] / raw["wall_s"],
                "same_final_accuracy": abs(sim["final_test_acc"] - raw["final_test_acc"]) < 1e-9,
                "breakdown": breakdown(sim, raw),
            }
        )
        print(f"repeat {repeat}: ratio {repeats[-1]['ratio']:.3f}", flush=True)
    keys = repeats[0]["breakdown"].keys()
    result = {
        "command": "python benchmarks/overhead.py " + " ".join(sys.argv[1:]),
        "date": today(),
        "machine": machine(),
        "experiment": {
            "profile": args.profile,
            "override": args.override,
            "seed": 0,
            "torch_threads": 1,
            "client_resources_num_cpus": 1,
        },
        "overhead_ratio": summary([r["ratio"] for r in repeats]),
        "sim_wall_s": summary([r["sim"]["wall_s"] for r in repeats]),
        "raw_wall_s": summary([r["raw"]["wall_s"] for r in repeats]),
        "breakdown": {k: summary([r["breakdown"][k] for r in repeats]) for k in keys},
        "sim_peak_rss_mb": summary([r["sim"]["memory"]["peak_rss_mb"] for r in repeats]),
        "raw_peak_rss_mb": summary([r["raw"]["memory"]["peak_rss_mb"] for r in repeats]),
        "same_final_accuracy": all(r["same_final_accuracy"] for r in repeats),
        "repeats": repeats,
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("overhead_ratio", "sim_wall_s", "raw_wall_s")}))
    return 0


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
