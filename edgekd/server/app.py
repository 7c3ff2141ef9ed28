"""The edgekd ServerApp (``flwr run``): runs the experiment of the run config.

The work is in :mod:`edgekd.runner`, shared with :mod:`edgekd.local`; results go to
``<output-dir>/<strategy>-<timestamp>-<run id>``, or, when the run config's ``resume-dir``
names a run folder (``python -m edgekd.launch --resume RUN_DIR``), on in that folder from its
last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from edgekd.config import ExperimentConfig
from edgekd.runner import make_output_dir, prepare_run, run_experiment

__all__ = ["app", "make_output_dir", "prepare_run", "run_experiment"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp entry point (``flwr run``)."""
    run_config = dict(context.run_config)
    cfg = ExperimentConfig.from_run_config(run_config)
    resume_dir = str(run_config.get("resume-dir", "") or "")
    if resume_dir:  # python -m edgekd.launch --resume RUN_DIR
        run_experiment(grid, run_config, Path(resume_dir), resume=True)
    else:
        run_experiment(grid, run_config, make_output_dir(cfg, context.run_id))
