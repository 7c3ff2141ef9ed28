"""Regenerate every benchmark figure, ``benchmarks/results.json`` and ``benchmarks/README.md``.

Runs the benchmarks one after another (one heavy process at a time), each writing its own JSON
next to this file, then collects the headline ratios into ``results.json`` and writes the
README's tables from the JSON files. Nothing in the README is typed by hand.

Usage::

    python benchmarks/run_all.py                       # everything (about 45 min on 2 cores)
    python benchmarks/run_all.py --only scale threads  # some benchmarks, then the report
    python benchmarks/run_all.py --report-only         # rebuild results.json and README.md
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from typing import Any

from common import (
    HERE,
    PYTHON,
    ROOT,
    machine,
    read_json,
    stop_on_sigterm,
    summary,
    today,
    write_json,
)

BENCHMARKS: dict[str, list[str]] = {
    "distill_cost": ["distill_cost.py", "--repeats", "3", "--epochs", "2", "--skip-naive"],
    "overhead": ["overhead.py", "--repeats", "3"],
    "overhead_short": [
        "overhead.py",
        "--repeats",
        "3",
        "--short",
        "--out",
        str(HERE / "overhead_short.json"),
    ],
    "fab_staging": ["fab_staging.py", "--repeats", "3"],
    "scale": ["scale.py", "--repeats", "3"],
    "scale_fixed": ["scale_fixed.py"],
    "threads": ["threads.py", "--repeats", "3"],
    "ray_cluster": ["ray_cluster.py"],
}
TARGETS = {
    "overhead_ratio": ("<= 1.15", 1.15),
    "kd_cost_ratio_m5_m1": ("<= 1.3", 1.3),
    "round_time_ratio_1000_10_fixed": ("<= 1.2", 1.2),
    "rss_ratio_1000_10_fixed": ("<= 1.2", 1.2),
}


def load(name: str) -> dict[str, Any] | None:
    """``benchmarks/<name>.json`` or None when it was not produced."""
    path = HERE / f"{name}.json"
    return read_json(path) if path.is_file() else None


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table cell."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def spread(stats: dict[str, Any] | None, digits: int = 2) -> str:
    """``median (min-max)`` of a summary dict."""
    if not stats:
        return "n/a"
    return (
        f"{fmt(stats['median'], digits)} ({fmt(stats['min'], digits)}-{fmt(stats['max'], digits)})"
    )


def collect() -> dict[str, Any]:
    """The headline figures of all JSON files, as ``results.json``."""
    overhead, distill, fixed = load("overhead"), load("distill_cost"), load("scale_fixed")
    figures: dict[str, Any] = {
        "overhead_ratio": overhead["overhead_ratio"] if overhead else None,
        "kd_cost_ratio_m5_m1": distill["kd_cost_ratio_m5_m1"] if distill else None,
        "round_time_ratio_1000_10_fixed": _worst_ratio(fixed, "round_time"),
        "rss_ratio_1000_10_fixed": _worst_ratio(fixed, "rss"),
    }
    sources = {
        "overhead_ratio": overhead,
        "kd_cost_ratio_m5_m1": distill,
        "round_time_ratio_1000_10_fixed": fixed,
        "rss_ratio_1000_10_fixed": fixed,
    }
    result: dict[str, Any] = {}
    for key, stats in figures.items():
        source = sources[key]
        entry = dict(stats) if stats else {"median": None, "min": None, "max": None, "repeats": 0}
        entry["target"] = TARGETS[key][0]
        entry["meets_target"] = bool(stats and stats["median"] <= TARGETS[key][1])
        entry["command"] = source["command"] if source else None
        entry["date"] = source["date"] if source else None
        result[key] = entry
    result["scale_10000_edges"] = _ten_thousand(fixed)
    result["machine"] = machine()
    result["date"] = today()
    return result


def _worst_ratio(data: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The larger 1,000/10-edge ratio of FedAvg and cloned distillation (one repeat each)."""
    ratios = (data or {}).get("ratios_1000_10") or {}
    values = {strategy: r[kind] for strategy, r in ratios.items()}
    if not values:
        return None
    worst = max(values.values())
    return {"median": worst, "min": worst, "max": worst, "repeats": 1, "per_strategy": values}


def _ten_thousand(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What happened at 10,000 edges, per strategy: the figures or the measured failure."""
    found = []
    for run in (data or {}).get("runs", []):
        if run["edges"] == 10000:
            entry = {
                k: run.get(k)
                for k in ("strategy", "returncode", "wall_s", "first_round_s", "round_s_median")
            }
            entry["peak_rss_mb"] = run["memory"].get("peak_rss_mb")
            entry["rounds_recorded"] = run.get("rounds_recorded")
            if "error" in run:
                entry["error_tail"] = run["error"][-600:]
            found.append(entry)
    return found


def _summary_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| figure | median | min | max | repeats | target | met | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in TARGETS:
        e = results[key]
        lines.append(
            f"| `{key}` | {fmt(e['median'], 3)} | {fmt(e['min'], 3)} | {fmt(e['max'], 3)} | "
            f"{e['repeats']} | {e['target']} | {'yes' if e['meets_target'] else 'no'} | "
            f"`{e['command']}` |"
        )
    return lines


def _load_note(data: dict[str, Any]) -> str:
    machine_info = data.get("machine")
    load_avg = machine_info.get("load_average_at_start") if isinstance(machine_info, dict) else None
    return f" Load average when it started: {load_avg}." if load_avg else ""


def _overhead_section(data: dict[str, Any] | None, title: str) -> list[str]:
    lines = [title, ""]
    if not data:
        return [*lines, "Not measured.", ""]
    exp = data["experiment"]
    b = data["breakdown"]
    shortened = f"with `{exp['override']}`" if exp["override"] else "as it is (not shortened)"
    lines += [
        f"Command: `{data['command']}` ({data['date']}).{_load_note(data)} Experiment: "
        f"`{exp['profile']}` {shortened}, seed 0, 1 torch thread everywhere, 1 CPU per "
        "virtual client. "
        "(a) `python -m edgekd.launch` (`flwr run`, private SuperLink, Ray actors); "
        "(b) the same Phase 0, edge training (`train_supervised` with the ClientApp's seeds) "
        "and Phase 2 (`ClonedDistillation._distill_round`) in one process, no messages. "
        "Both are fresh processes timed from start to exit; the order alternates. "
        f"Same final test accuracy in (a) and (b): {data['same_final_accuracy']}.",
        "",
        "| quantity (seconds unless noted) | median (min-max) |",
        "| --- | --- |",
        f"| (a) simulation engine, wall | {spread(data['sim_wall_s'], 1)} |",
        f"| (b) plain loop, wall | {spread(data['raw_wall_s'], 1)} |",
        f"| **ratio (a)/(b)** | **{spread(data['overhead_ratio'], 3)}** |",
        f"| extra, total | {spread(b['total_extra_s'], 1)} |",
        f"| extra outside the experiment loop (start-up, teardown) | "
        f"{spread(b['startup_and_teardown_extra_s'], 1)} |",
        f"| (a) outside the loop | {spread(b['sim_outside_loop_s'], 1)} |",
        f"| (b) outside the loop | {spread(b['raw_outside_loop_s'], 1)} |",
        f"| extra in Phase 0 + initial evaluation | {spread(b['round0_extra_s'], 1)} |",
        f"| extra in round 1 (partition→node mapping, actor warm-up) | "
        f"{spread(b['first_round_extra_s'], 1)} |",
        f"| extra per steady round (rounds ≥ 2) | {spread(b['per_round_extra_s'], 2)} |",
        f"| extra per train message (send→reply handled minus edge training) | "
        f"{spread(b['per_message_extra_s'], 2)} |",
        f"| steady round time ratio (a)/(b) | {spread(b['steady_round_ratio'], 3)} |",
        f"| Phase 0 in (a) / in (b) | {spread(b['phase0_sim_s'], 1)} / "
        f"{spread(b['phase0_raw_s'], 1)} |",
        f"| peak RSS of the process tree, MB: (a) / (b) | {spread(data['sim_peak_rss_mb'], 0)} / "
        f"{spread(data['raw_peak_rss_mb'], 0)} |",
        "",
    ]
    fixed = [
        r["breakdown"]["startup_and_teardown_extra_s"]
        + r["breakdown"]["round0_extra_s"]
        + r["breakdown"]["first_round_extra_s"]
        for r in data["repeats"]
    ]
    fixed_median = statistics.median(fixed)
    lines += [
        "Reading: the extra time is a fixed cost (start-up and teardown outside the loop; "
        "Phase 0, which in (a) runs while Ray starts its actors and they answer the whoami "
        "queries pushed before it; round 1): median "
        f"{fixed_median:.1f} s here. Steady rounds differ from the plain loop's by the median "
        f"per-round figure above. With a fixed cost of {fixed_median:.1f} s and no per-round "
        "cost, the ratio is 1.15 for a plain loop of "
        f"{fixed_median / 0.15:.0f} s (derived from the medians above, not measured).",
        "",
    ]
    return lines


def _fab_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["### 1c. Packing the app: `flwr run APP` against the launcher's staged copy", ""]
    if not data:
        return [*lines, "Not measured.", ""]
    return [
        *lines,
        f"Command: `{data['command']}` ({data['date']}).{_load_note(data)} Flower's "
        "`build_fab_from_disk` on the repository (with its `.venv`) against "
        "`edgekd.launch.stage_app` plus `build_fab_from_disk` of the copy, in one process.",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| files below the app directory | {data['files_below_app']:,} |",
        f"| files staged | {data['files_staged']:,} |",
        f"| FAB members | {data['fab_members']} |",
        f"| `flwr run APP` packing, s | {spread(data['direct_s'], 2)} |",
        f"| stage + pack, s | {spread(data['staged_s'], 2)} |",
        f"| speed-up | {spread(data['speedup'], 0)} |",
        f"| identical FAB | {data['same_fab']} |",
        "",
    ]


def _distill_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 2. Distillation (Phase 2) cost against memory M and ensemble P", ""]
    if not data:
        return [*lines, "Not measured.", ""]
    settings = data["settings"]
    lines += [
        f"Command: `{data['command']}` ({data['date']}).{_load_note(data)} "
        "One Phase-2 round as the strategy runs "
        f"it: the P new teachers' logits on the pool, then `distill` against all M·P cached "
        f"teachers; {settings['model']}, {settings['core_size']} core images, "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"{settings['threads']} thread. Ratio to M=1 (same P) within each repeat. Peak RSS: "
        "the process's peak during the round (`VmHWM` reset before it); most of it is the "
        "interpreter with torch loaded.",
        "",
        "| M | P | teachers | s/epoch median (min-max) | ratio to M=1 | peak RSS MB | "
        "cached logits MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['M']} | {row['P']} | {row['teachers']} | "
            f"{spread(row['seconds_per_epoch'], 2)} | {spread(row['ratio_to_m1'], 2)} | "
            f"{fmt(row['peak_rss_mb']['median'], 0)} | {fmt(row['teacher_logits_mb'], 2)} |"
        )
    return [*lines, ""]


def _scale_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 3. Scale: 10, 100, 1,000 virtual edges", ""]
    if not data:
        return [*lines, "Not measured.", ""]
    s = data["settings"]
    lines += [
        f"Command: `{data['command']}` ({data['date']}).{_load_note(data)} "
        f"Engine: {data['engine']}; "
        f"{s['strategy']}, model {s['model']}, {s['rounds']} rounds, data `{s['data']}`, "
        f"{s['partitioner']}, one SuperNode per edge, 1 CPU per virtual client. "
        "Time per round: median over rounds ≥ 2 of the ServerApp's clock (round 1 also asks "
        "every node for its partition: 'mapping'). Memory: peak sum over the whole process "
        "tree of `edgekd.launch` (SuperLink, ServerApp, Ray, actors), sampled every 0.5 s.",
        "",
        "| edges | partitioning ms | s per round | edge examples | edge send→reply s | "
        "mapping s | wall s | peak RSS MB | peak PSS MB | processes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        runs = data["runs"][str(row["edges"])]
        # rows of metrics.json: 0 = Phase 0, 1 = round 1 (mapping), >= 2 steady rounds
        uplink = summary([statistics.median(r["uplink_s"][2:]) for r in runs])
        examples = sorted({n for r in runs for n in r["edge_examples"][2:]})
        lines.append(
            f"| {row['edges']} | {fmt(row['partition_s'] * 1000, 1)} | "
            f"{spread(row['round_s'], 2)} | {', '.join(map(str, examples))} | "
            f"{spread(uplink, 2)} | {spread(row['mapping_s'], 1)} | "
            f"{spread(row['wall_s'], 0)} | {spread(row['peak_rss_mb'], 0)} | "
            f"{spread(row['peak_pss_mb'], 0)} | {row['peak_processes']} |"
        )
    lines += [
        "",
        "The Dirichlet edges get smaller as their number grows (the same 4,653 edge images), "
        "so the edge's own training shrinks too; the server's share of a round (distillation, "
        "evaluation, message handling) is the round time minus send→reply. The one cost that "
        "grows with the number of edges is round 1's mapping: one `whoami` query per node.",
    ]
    for key in ("round_time_ratio_1000_10", "rss_ratio_1000_10", "pss_ratio_1000_10"):
        if key in data:
            lines.append(f"\n`{key}`: {spread(data[key], 3)}")
    return [*lines, ""]


def _scale_fixed_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["### 3b. Scale with fixed data per edge: 10 to 10,000 SuperNodes", ""]
    if not data:
        return [*lines, "Not measured.", ""]
    s = data["settings"]
    sittings = data.get("sittings") or [
        {
            "command": data["command"],
            "date": data["date"],
            "load_average_at_start": data["machine"].get("load_average_at_start"),
            "rounds": s["rounds"],
            "timeout_s": s["timeout_s"],
        }
    ]
    lines += [
        "Sittings (the `sitting` column of the table says which made each run):",
        "",
        *(
            f"{i}. `{x['command']}` ({x['date']}; {x['rounds']} rounds, per-run timeout "
            f"{fmt(x['timeout_s'], 0)} s; load average when it started: "
            f"{x['load_average_at_start']})"
            for i, x in enumerate(sittings)
        ),
        "",
        f"Engine: {data['engine']}; every edge holds {s['per_edge']} images of `{s['data']}` "
        f"({s['partitioner']}), model {s['model']}, one SuperNode per "
        f"edge, 1 CPU per virtual client, one run per point. Strategies: "
        + "; ".join(f"`{k}`: {v}" for k, v in s["strategies"].items())
        + ". Time per round: median over rounds ≥ 2 of the ServerApp's clock. First round: "
        "seconds from the launcher's start to the ServerApp's round-1 line (SuperLink, Ray "
        "and node start-up, Phase 0, partition mapping). Memory: peak sum over the process "
        "tree of `edgekd.launch`, sampled every 0.5 s.",
        "",
        "| strategy | edges | exit | s per round | s to first round | wall s | peak RSS MB | "
        "peak PSS MB | processes | sitting |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in sorted(data["runs"], key=lambda r: (r["edges"], r["strategy"])):
        memory = run["memory"]
        lines.append(
            f"| {run['strategy']} | {run['edges']} | {run['returncode']} | "
            f"{fmt(run.get('round_s_median'), 2)} | {fmt(run.get('first_round_s'), 0)} | "
            f"{fmt(run['wall_s'], 0)} | {fmt(memory.get('peak_rss_mb'), 0)} | "
            f"{fmt(memory.get('peak_pss_mb'), 0)} | {memory.get('peak_processes', 'n/a')} | "
            f"{run.get('sitting', 0)} |"
        )
    for strategy, ratio in (data.get("ratios_1000_10") or {}).items():
        lines.append(
            f"\n1,000 / 10 edges, {strategy}: round time {fmt(ratio['round_time'], 3)}, "
            f"RSS {fmt(ratio['rss'], 3)}, PSS {fmt(ratio['pss'], 3)}"
        )
    failed = [r for r in data["runs"] if "error" in r]
    for run in failed:
        text = run["error"].splitlines()
        server = [x.split(":", 1)[-1].strip() for x in text if "ROUND" in x or "round " in x]
        lines.append(
            f"\n{run['strategy']} at {run['edges']} edges did not finish (exit "
            f"{run['returncode']}, {fmt(run['wall_s'], 0)} s, last round recorded "
            f"{run['rounds_recorded']}, peak RSS {fmt(run['memory'].get('peak_rss_mb'), 0)} MB); "
            f"the ServerApp's last round line: `{server[-1] if server else 'none'}`; "
            f"the launcher's last line: `{text[-1].strip()[:200] if text else ''}`"
        )
        if run["strategy"] == "cloned-distillation" and run["rounds_recorded"] == 0:
            lines.append(
                "Round 1 of cloned distillation starts with the partition mapping (one `whoami` "
                "query per SuperNode): the measured limit at this size is that time, not "
                f"memory (peak RSS {fmt(run['memory'].get('peak_rss_mb'), 0)} MB of "
                f"{data['machine'].get('memory_gb')} GB)."
            )
    return [*lines, ""]


def _threads_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 4. Torch threads per virtual client", ""]
    if not data:
        return [*lines, "Not measured.", ""]
    lines += [
        f"Command: `{data['command']}` ({data['date']}).{_load_note(data)} "
        "A Ray actor created like Flower's "
        "virtual clients (`options(num_cpus=...)`) on a private 2-CPU Ray instance reports "
        "what the ClientApp sees (`client-threads = 0`).",
        "",
        "| num_cpus per client | OMP_NUM_THREADS in the actor | torch default | "
        "torch threads after `set_torch_threads(0)` |",
        "| --- | --- | --- | --- |",
    ]
    for row in data["share"]:
        lines.append(
            f"| {row['num_cpus']} | {row['OMP_NUM_THREADS']} | {row['torch_default_threads']} | "
            f"{row['torch_threads_after_set_torch_threads_0']} |"
        )
    over = data["oversubscription"]
    lines += [
        "",
        f"Threads follow the CPU share: {data['share_follows_cpus']}. Cost of getting it wrong: "
        f"{over['rows'][0]['processes']} processes train {over['model']} at once "
        f"({over['steps_per_process']} batches of {over['batch_size']} each); wall time until "
        "both finish, slowdown against 1 thread per process within each repeat.",
        "",
        "| processes × threads | total threads on 2 cores | wall s | slowdown |",
        "| --- | --- | --- | --- |",
    ]
    for row in over["rows"]:
        lines.append(
            f"| {row['processes']} × {row['threads_per_process']} | {row['total_threads']} | "
            f"{spread(row['wall_s'], 1)} | {spread(row['slowdown_vs_share'], 2)} |"
        )
    return [*lines, ""]


def _ray_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 5. Two-node Ray cluster on 127.0.0.1", ""]
    if not data:
        return [*lines, "Not measured.", ""]
    sim = data.get("simulation", {})
    nodes = data.get("nodes", [])
    node_text = ", ".join(f"{n['address']} {n['cpus']:.0f} CPU" for n in nodes)
    lines += [
        f"Command: `{data['command']}` ({data['date']}).{_load_note(data)} "
        f"Head: `{data['head_command']}`; "
        f"worker: `{data['worker_command']}`; simulation: `python -m edgekd.launch` with "
        f"`RAY_ADDRESS={data['address']}`.",
        "",
        f"- nodes: {len(nodes)} ({node_text})",
        f"- simulation exit code {sim.get('returncode')}, {fmt(sim.get('wall_s'), 1)} s; "
        "virtual clients started by this cluster's raylets: "
        f"{sim.get('actors_started_by_this_cluster')}",
        f"- ClientAppActor processes by node: {sim.get('actors')}",
        f"- partitions trained by node: {sim.get('partitions_trained_by_node')}",
        f"- virtual clients on both nodes: {data.get('clients_on_both_nodes')}",
        f"- every listening socket on 127.0.0.1: {data.get('all_listening_on_loopback')}",
        f"- processes left after stopping: {data['stopped']['processes_left_after_stop']}",
        "",
    ]
    return lines


def write_readme(results: dict[str, Any]) -> None:
    """``benchmarks/README.md`` from the JSON files."""
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py` from the JSON files in this folder; do not "
        "edit by hand. Each section names the command that produced its figures.",
        "",
        f"Machine: {m['cpu_cores']} CPU cores, {m['memory_gb']} GB RAM, {m['accelerator']}, "
        f"{m['platform']}; {versions}. Report date: {results['date']}. The machine may be "
        "shared with other jobs (each section gives the load average when its benchmark "
        "started), so absolute seconds are noisy: every comparison is a ratio taken within "
        "one repeat, and the tables give the median and the min-max over repeats.",
        "",
        "## Headline figures (`results.json`)",
        "",
        *_summary_table(results),
        "",
        *_overhead_section(
            load("overhead"),
            "## 1. Framework overhead: simulation engine (Ray) against a plain loop",
        ),
        *_overhead_section(
            load("overhead_short"),
            "### 1b. The same, on a 3-round, 1-epoch cut of the profile (start-up dominates)",
        ),
        *_fab_section(load("fab_staging")),
        *_distill_section(load("distill_cost")),
        *_scale_section(load("scale")),
        *_scale_fixed_section(load("scale_fixed")),
        *_threads_section(load("threads")),
        *_ray_section(load("ray_cluster")),
        "## GPU",
        "",
        "No GPU was lent to this task, so the overhead benchmark with fractional GPUs per "
        "virtual client has not been run.",
        "",
    ]
    (HERE / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    failed = []
    if not args.report_only:
        for name in args.only or list(BENCHMARKS):
            script, *options = BENCHMARKS[name]
            print(f"== {name}: python benchmarks/{script} {' '.join(options)}", flush=True)
            code = subprocess.run(
                [PYTHON, str(HERE / script), *options], cwd=ROOT, check=False
            ).returncode
            if code != 0:
                failed.append(name)
    results = collect()
    write_json(HERE / "results.json", results)
    write_readme(results)
    print(f"wrote {HERE / 'results.json'} and {HERE / 'README.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main())
