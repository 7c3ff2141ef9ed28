"""Run an edgekd app with ``flwr run`` on a private, offline, self-cleaning simulation SuperLink.

``flwr run .`` with Flower's default ``:local:`` connection starts a detached SuperLink that
keeps running afterwards and, by default, tries to install the app's dependencies online. This
launcher does the same run without either problem:

1. starts ``flower-superlink --simulation --disable-runtime-dependency-installation`` on free
   loopback ports, with its own database and log in a temporary ``FLWR_HOME``;
2. writes a connection for it into that ``FLWR_HOME`` (the user's ``~/.flwr`` is untouched);
3. copies the files that go into the app's FAB into a staging directory, pruning what Flower
   would walk only to throw away (``.venv``, ``__pycache__``, Flower's other built-in
   excludes and ``.gitignore``-d directories; ``benchmarks/fab_staging.py`` measures the
   difference);
4. calls ``flwr run STAGED edgekd-local --stream`` with your ``--run-config`` and
   ``--federation-config`` (``num-supernodes`` defaults to the run's ``num-partitions``,
   ``client-resources-num-cpus`` to 1). ``flwr run`` refuses a TOML file next to ``key=value``
   pairs, so every ``--run-config`` (TOML profiles and pairs, later ones winning) is merged
   here into one set of pairs, with relative ``npz-path``/``data-dir``/``output-dir`` made
   absolute;
5. stops the SuperLink and everything it started (its process group, and the simulation
   process and its Ray cluster, which run in a session of their own), also on error, Ctrl-C or
   SIGTERM.

Usage::

    python -m edgekd.launch [APP_DIR] [--run-config simulations/x.toml | "k=v ..."] \
        [--federation-config "num-supernodes=4"] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgekd.config import check_known_keys
from edgekd.processes import flower_env, free_port, stop_process

__all__ = [
    "LaunchError",
    "add_app_arguments",
    "add_resume_argument",
    "app_run_config",
    "command_line",
    "effective_run_config",
    "flwr_run_command",
    "format_pairs",
    "launch",
    "main",
    "private_superlink",
    "resume_run_config",
    "run_config_arguments",
    "run_config_overrides",
    "stage_app",
]


class LaunchError(RuntimeError):
    """The SuperLink could not be started or the run failed."""


def _parse_pairs(text: str) -> dict[str, Any]:
    """Parse Flower's ``"k1=v1 k2=v2"`` override syntax (values are TOML)."""
    values: dict[str, Any] = {}
    for token in shlex.split(text):
        key, sep, raw = token.partition("=")
        if not sep:
            raise ValueError(f"override {token!r} is not of the form key=value")
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    return values


def run_config_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Merge ``--run-config`` arguments (TOML files or ``"k=v ..."``), later ones winning."""
    merged: dict[str, Any] = {}
    for override in overrides:
        path = Path(override)
        if override.endswith(".toml"):
            if not path.is_file():
                raise LaunchError(f"run-config file not found: {override}")
            merged.update(tomllib.loads(path.read_text()))
        else:
            merged.update(_parse_pairs(override))
    return merged


def app_run_config(app_dir: Path) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app in ``app_dir``: every valid key, with defaults."""
    pyproject_file = app_dir / "pyproject.toml"
    if not pyproject_file.is_file():
        raise LaunchError(f"no pyproject.toml in the app directory {app_dir}")
    pyproject = tomllib.loads(pyproject_file.read_text())
    return dict(pyproject["tool"]["flwr"]["app"]["config"])


def effective_run_config(
    app_dir: Path, overrides: Sequence[str], *, check_keys: bool = True
) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of ``app_dir`` with ``--run-config`` overrides applied.

    With ``check_keys`` an override whose key the app does not define is refused
    (``ValueError`` naming it), as ``flwr run`` does.
    """
    defaults = app_run_config(app_dir)
    merged = run_config_overrides(overrides)
    if check_keys:
        check_known_keys(merged, defaults, source=str(app_dir / "pyproject.toml"))
    return {**defaults, **merged}


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if '"' in value or "\\" in value:
            if "'" in value:
                raise LaunchError(f"run-config {key}: cannot pass a value with both quote kinds")
            return f"'{value}'"
        return f'"{value}"'
    raise LaunchError(f"run-config {key}: unsupported value {value!r} ({type(value).__name__})")


def format_pairs(values: dict[str, Any]) -> str:
    """Flower's ``"k1=v1 k2=v2"`` syntax for ``values`` (strings quoted, TOML scalars)."""
    return " ".join(f"{key}={_toml_value(key, value)}" for key, value in values.items())


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log_file: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(
                f"flower-superlink exited with code {process.returncode}; see {log_file}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        time.sleep(0.2)
    raise LaunchError(f"flower-superlink did not become healthy within 60 s; see {log_file}")


@contextlib.contextmanager
def private_superlink(flwr_home: Path) -> Iterator[str]:
    """Start a simulation SuperLink and yield the name of a connection to it in ``flwr_home``.

    The simulation's size and client resources go with each ``flwr run`` as
    ``--federation-config`` (the connection's ``options.`` fields are deprecated, and ignored
    as soon as any ``--federation-config`` is given).
    """
    port = free_port()
    log_file = flwr_home / "superlink.log"
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        'default = "edgekd-local"\n\n'
        "[superlink.edgekd-local]\n"
        f'address = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    env = flower_env(flwr_home)
    command = [
        str(Path(sys.executable).with_name("flower-superlink")),
        "--insecure",
        "--simulation",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(flwr_home / "state.db"),
        "--log-file",
        str(log_file),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(port, process, log_file)
        yield "edgekd-local"
    finally:
        stop_process(process, port)


PATH_KEYS = ("npz-path", "data-dir", "output-dir", "cache-dir")


def _absolute_paths(config: dict[str, Any]) -> dict[str, str]:
    """Resolve relative path keys against the launcher's working directory.

    The ServerApp and ClientApps run from Flower's copy of the app with another working
    directory, so ``npz-path='../shared/data/x.npz'`` must be made absolute here.
    """
    paths = {}
    for key in PATH_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            paths[key] = str(Path(value).resolve())
    return paths


def flwr_run_command(
    app: Path,
    connection: str,
    run_config: Sequence[str],
    federation: dict[str, Any],
    *,
    staged: Path | None = None,
) -> list[str]:
    """The ``flwr run`` command line: all run-config overrides merged into one pair string.

    ``app`` provides the default run config; ``flwr run`` packs ``staged`` (a
    :func:`stage_app` copy of ``app``) when given.
    """
    packed = str(staged or app)
    command = [str(Path(sys.executable).with_name("flwr")), "run", packed, connection, "--stream"]
    return command + run_config_arguments(app, run_config, federation)


def run_config_arguments(
    app: Path, run_config: Sequence[str], federation: dict[str, Any] | None = None
) -> list[str]:
    """``--run-config``/``--federation-config`` arguments for ``flwr run``.

    Every ``--run-config`` (TOML files and ``"k=v ..."`` pairs, later ones winning) is merged
    into one pair string, since ``flwr run`` refuses a file next to pairs, and relative
    ``npz-path``/``data-dir``/``output-dir`` are made absolute.
    """
    overrides = run_config_overrides(run_config)
    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    overrides.update(_absolute_paths({**pyproject["tool"]["flwr"]["app"]["config"], **overrides}))
    command: list[str] = []
    if overrides:
        command += ["--run-config", format_pairs(overrides)]
    if federation:
        command += ["--federation-config", format_pairs(federation)]
    return command


def _flower_fab_rules() -> tuple[tuple[str, ...], frozenset[str], frozenset[str]]:
    """Flower's built-in FAB rules, read from ``flwr.common.constant``.

    Returns the file suffixes of ``FAB_INCLUDE_PATTERNS`` (``**/*.py`` ...), the root-level
    file names it includes (``/LICENSE``) and the root directories ``FAB_EXCLUDE_PATTERNS``
    drops whole (``.venv/**`` ...).
    """
    from flwr.common.constant import FAB_EXCLUDE_PATTERNS, FAB_INCLUDE_PATTERNS

    suffixes = tuple(p.removeprefix("**/*") for p in FAB_INCLUDE_PATTERNS if p.startswith("**/*."))
    root_files = frozenset(p[1:] for p in FAB_INCLUDE_PATTERNS if p.rfind("/") == 0)
    root_dirs = frozenset(
        p.removesuffix("/**")
        for p in FAB_EXCLUDE_PATTERNS
        if p.endswith("/**") and not any(c in p.removesuffix("/**") for c in "*/")
    )
    return suffixes, root_files, root_dirs


def stage_app(app: Path, dest: Path) -> Path:
    """Copy the files of ``app`` that can go into its FAB into a fresh ``dest``; return it.

    ``flwr run`` reads every file below the app directory before it filters them, the README's
    ``.venv`` inside the app included (``benchmarks/fab_staging.py``). This walk prunes the
    directories whose files Flower drops anyway: ``__pycache__``, Flower's built-in root
    excludes (``.venv``, ``build``, ...) and directories ignored by the app's ``.gitignore``
    (CI's ``.ci-venv``, ``results/runs``). It copies files with the FAB's suffixes, ``LICENSE``
    and ``.gitignore`` (all taken from Flower's constants); Flower then applies its own rules
    and the app's ``fab-include``/``fab-exclude`` to the copy, so the FAB is the same.
    """
    import pathspec

    suffixes, root_files, root_dirs = _flower_fab_rules()

    gitignore = app / ".gitignore"
    lines = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.is_file() else []
    with warnings.catch_warnings():  # Flower's own FAB filter uses "gitwildmatch" too
        warnings.simplefilter("ignore", DeprecationWarning)
        ignored = pathspec.PathSpec.from_lines("gitwildmatch", lines)
    if dest.exists():  # a kept --flwr-home: files deleted from the app must not linger
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(app, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(app)
        keep = []
        for name in dirnames:
            rel = (rel_dir / name).as_posix()
            pruned = (
                name == "__pycache__"
                or (rel_dir == Path(".") and name in root_dirs)
                or ignored.match_file(rel + "/")
            )
            if not pruned:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            source = here / name
            rel = (rel_dir / name).as_posix()
            wanted = name.endswith(suffixes) or rel in root_files | {".gitignore"}
            if wanted and not source.is_symlink():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    return dest


def _run_outcome(flwr_returncode: int, listing_json: str) -> int:
    """0 if the (only) run finished as completed; otherwise report why and return 1.

    ``flwr run --stream`` exits 0 even when the ServerApp raised, so the run's status is read
    from ``flwr ls``.
    """
    if flwr_returncode != 0:
        return flwr_returncode
    try:
        runs = json.loads(listing_json).get("runs", [])
    except json.JSONDecodeError:
        print(f"edgekd.launch: cannot read the run status: {listing_json!r}", file=sys.stderr)
        return 1
    if not runs:
        print("edgekd.launch: the SuperLink reports no run", file=sys.stderr)
        return 1
    run = runs[-1]
    status = str(run.get("status", ""))
    if status != "finished:completed":
        print(
            f"edgekd.launch: run ended with status {status!r}: {run.get('status-details', '')}",
            file=sys.stderr,
        )
        return 1
    return 0


def launch(
    app_dir: str | Path = ".",
    run_config: Sequence[str] = (),
    federation_config: str = "",
    timeout: float | None = None,
    flwr_home: str | Path | None = None,
) -> int:
    """Run the app in ``app_dir`` to completion; return ``flwr run``'s exit code."""
    app = Path(app_dir).resolve()
    config = effective_run_config(app, run_config)
    federation = _parse_pairs(federation_config) if federation_config else {}
    federation = {
        "num-supernodes": int(federation.pop("num-supernodes", config.get("num-partitions", 2))),
        "client-resources-num-cpus": int(federation.pop("client-resources-num-cpus", 1)),
        **federation,
    }
    with contextlib.ExitStack() as stack:
        home = (
            Path(flwr_home)
            if flwr_home
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgekd-flwr-")))
        )
        home.mkdir(parents=True, exist_ok=True)
        staged = stage_app(app, home / "app")
        connection = stack.enter_context(private_superlink(home))
        command = flwr_run_command(app, connection, run_config, federation, staged=staged)
        env = flower_env(home)
        completed = subprocess.run(command, env=env, timeout=timeout, check=False)
        listing = subprocess.run(
            [str(Path(sys.executable).with_name("flwr")), "ls", connection, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return _run_outcome(completed.returncode, listing.stdout)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The app directory and the repeatable ``--run-config`` of every edgekd command line."""
    parser.add_argument("app", nargs="?", default=".", help="the Flower app directory")
    parser.add_argument(
        "--run-config",
        "-c",
        action="append",
        default=[],
        help="a TOML file or 'key=value ...' overrides (repeatable)",
    )


def command_line(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An argument parser for ``prog`` with :func:`add_app_arguments`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_app_arguments(parser)
    return parser


def resume_run_config(app: Path, run_dir: str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The run config that resumes ``run_dir``: its checkpoint's, with ``resume-dir`` set.

    ``overrides`` (``--run-config``), when given, must make the same run config as the
    checkpoint's (paths resolved): otherwise ``ValueError`` naming every difference. No
    checkpoint: ``FileNotFoundError`` naming the folder.
    """
    from edgekd.checkpoint import check_same_config, load_checkpoint

    folder = Path(run_dir).expanduser().resolve()
    saved = dict(load_checkpoint(folder)["run-config"])
    if overrides:
        current = effective_run_config(app, overrides)
        current.update(_absolute_paths(current))
        check_same_config(saved, current, folder)
    return {**saved, "resume-dir": str(folder)}


def add_resume_argument(parser: argparse.ArgumentParser) -> None:
    """``--resume RUN_DIR`` (launcher and local runner)."""
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR from its last complete round (its checkpoint.pt); "
        "--run-config, when given, must match the checkpoint's config",
    )


def _check(app: Path, run_config: Sequence[str]) -> None:
    """Refuse unknown keys and bad values before any process starts (``ValueError``)."""
    from edgekd.runner import check_run_config

    check_run_config(effective_run_config(app, run_config), app_run_config(app), plugin_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m edgekd.launch --help``."""
    parser = command_line("python -m edgekd.launch", __doc__)
    parser.add_argument(
        "--federation-config",
        default="",
        help="e.g. 'num-supernodes=10 client-resources-num-cpus=1'",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    parser.add_argument(
        "--flwr-home",
        default=None,
        help="keep the SuperLink's database and log here (default: a temp dir)",
    )
    add_resume_argument(parser)
    args = parser.parse_args(argv)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        if args.resume:
            resumed = resume_run_config(Path(args.app).resolve(), args.resume, args.run_config)
            args.run_config = [format_pairs(resumed)]
        _check(Path(args.app).resolve(), args.run_config)
    except (ValueError, LaunchError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)  # run the clean-up on SIGTERM as on Ctrl-C
    try:
        return launch(
            args.app, args.run_config, args.federation_config, args.timeout, args.flwr_home
        )
    except KeyboardInterrupt:
        print(
            "edgekd.launch: interrupted; the SuperLink and the simulation were stopped",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
