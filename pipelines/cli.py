"""`cutmix-study SUBCOMMAND [--config FILE] [--set key=value ...] [--output DIR]`; `cutmix-study --version`.

Exit codes (docs/architecture.md section 3): 0 success, 2 bad input (config, paths, data) with one line
`error: <what> (<allowed>)` on stderr and no traceback, 1 a failure while running.

Output: stdout holds results and summaries, stderr progress lines, warnings and errors. `--quiet` keeps only the
final summary and errors (warnings too: they are logged at WARNING). `--ray-dashboard` starts the local Ray
cluster with its dashboard on 127.0.0.1 and prints its URL (inside a Ray job, the cluster's own dashboard URL).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipelines.common import stage_main
from study.atomic import WriteError
from study.cluster import lock, session, signals
from study.cluster.session import dashboard_url, init_ray
from study.config.schema import ConfigError
from study.console import ENTRY_POINT_ENV, QUIET_ENV

SUBCOMMANDS = ("run", "study", "retrain", "evaluate", "export", "detect", "train", "budget")


# `--from` of each stage that has one: what it may name (pipelines.common.resolve_source resolves it for all).
FROM_HELP = {
    "retrain": "a study output directory or the study's MLflow run id (default: the output directory)",
    "evaluate": "a study output directory after retrain, its retrain/ directory, or a retrain MLflow run id",
    "export": "a study output directory after retrain, a run directory, or a retrain MLflow run id",
    "detect": "an export directory, an output directory holding export/, or an export MLflow run id",
}
VERSIONS = ("ray", "optuna", "mlflow", "torch")  # the libraries whose behaviour the pipeline is pinned to


class UsageError(ValueError):
    """Bad command-line input; one-line message."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit code 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def pinned() -> dict[str, str]:
    """The pins of constraints.txt beside the package (a source checkout), else {}."""
    path = Path(__file__).resolve().parents[1] / "constraints.txt"
    pins = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, sep, version = line.split("#")[0].strip().partition("==")
            if sep:
                pins[name.strip().lower()] = version.strip()
    return pins


def version_text() -> str:
    """`cutmix-study 0.1.0` and the installed Ray, Optuna, MLflow and torch, each marked where it differs from the
    pin in constraints.txt. Read from the package metadata: nothing is imported."""
    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    pins = pinned()
    lines = [f"cutmix-study {installed('cutmix-study')}"]
    for name in VERSIONS:
        have = installed(name)
        pin = pins.get(name)
        note = "" if pin is None or have.split("+")[0] == pin else f" (constraints.txt pins {pin})"
        lines.append(f"{name} {have}{note}")
    return "\n".join(lines)


class _Version(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cutmix-study", description="CutMix hyperparameter studies: study, retrain, export, "
                     "detect. With no --config the embedded digits default runs on the CPU.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and those of Ray, Optuna, MLflow and torch, then exit")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    helps = {
        "run": "all stages: study -> retrain -> evaluate -> export -> detect",
        "study": "Ray Tune + Optuna search over CutMix alpha, p and architecture",
        "retrain": "retrain the study's best config and baselines with several seeds; test mean +- std, 95%% CI",
        "evaluate": "the paper's evaluations of retrained models: calibration, CAM localization, occlusion, "
                    "in-between-class, FGSM, OOD; the method table",
        "export": "export a detection-ready backbone (backbone.pt, safetensors, manifest.json)",
        "detect": "fine-tune Faster R-CNN (FPN) from an exported backbone; report mAP",
        "train": "one training run of a config",
        "budget": "does CutMix pay at my budget? baseline vs cutmix_paper at each of budget.epochs, several seeds; "
                  "the difference per budget and the crossover (not part of `run`; see configs/digits_budget.yaml)",
    }
    for name in SUBCOMMANDS:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("--config", type=Path, default=None, help="YAML config (default: pipelines/configs/digits.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field by its dotted name, e.g. --set cutmix.alpha=0.5 (repeatable)")
        p.add_argument("--output", type=Path, default=None, help="output directory (default: runs/<name>)")
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the output dir)")
        p.add_argument("--resume", action="store_true", help="continue the run stored in the output directory")
        p.add_argument("--overwrite", action="store_true", help="replace earlier results in the output directory")
        p.add_argument("--quiet", action="store_true", help="print only the final summary and errors")
        p.add_argument("--ray-dashboard", action="store_true",
                       help="start the local Ray cluster with its dashboard (127.0.0.1) and print its URL")
        if name in FROM_HELP:
            flags = ("--from", "--backbone") if name == "detect" else ("--from",)  # --backbone: the old name
            p.add_argument(*flags, dest="source", default=None, help=FROM_HELP[name])
        if name == "detect":
            p.add_argument("--data", default=None, help="'synthetic' or a Pascal VOC root (holding VOCdevkit/)")
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2), read only from modules already imported: an exception of a
    class can only have been raised once its module ran, so importing the others would only cost time (importing
    them all, which pulled torch, torchvision and mlflow, made `train --set train.epochs=-1` take 4.6 s instead of
    1.7 s here)."""
    errors: list[type[BaseException]] = [UsageError, ConfigError]
    for module, name in (("study.data.bundle", "DataError"), ("study.checkpoint", "CheckpointError"),
                         ("study.export", "ExportError"), ("study.data.voc", "DetectionDataError"),
                         ("pipelines.results", "ResultError"), ("study.tracking.store", "TrackingError"),
                         ("study.metric_names", "EvaluationError"), ("study.cluster.lock", "LockError"),
                         ("study.cluster.capacity", "PlacementError")):
        found = getattr(sys.modules.get(module), name, None)
        if found is not None:
            errors.append(found)
    return tuple(errors)


def dispatch(args: argparse.Namespace) -> int:
    """`run` chains the stages; every other subcommand is one stage through the same door (`stage_main`)."""
    module = import_module(f"pipelines.{args.command}_stage")
    return int(module.main(args) or 0) if args.command == "run" else stage_main(module, args)


def configure(args: argparse.Namespace) -> None:
    """What the library reads from the environment (study.console): the subcommand, for MLflow's entry-point tag,
    and --quiet, which also lowers MLflow's own logging to warnings (its INFO lines: database set-up, system
    metrics). Set for every command, so an in-process caller's earlier --quiet does not stick."""
    os.environ[ENTRY_POINT_ENV] = f"cutmix-study {args.command}"
    os.environ[QUIET_ENV] = "1" if args.quiet else ""
    if args.quiet:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when mlflow is first imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # and if it already is


def start_dashboard() -> None:
    """--ray-dashboard: Ray with its dashboard before any stage starts it; the URL on stderr."""

    init_ray(dashboard=True)
    print(f"Ray dashboard: {dashboard_url() or 'not served by this cluster'}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Around it (study.cluster): SIGINT/SIGTERM stop it cleanly (`signals`: exit 130/143, Ray
    shut down if the command started it), and every output directory it writes is locked for its life (`lock`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    stopping = None
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        stopping = _start_command()
        configure(args)
        if args.ray_dashboard:
            start_dashboard()
        return dispatch(args)
    except KeyboardInterrupt as exc:
        # Ray's blocking calls (ray.get / ray.wait) run the signal handlers themselves and turn whatever they raise
        # into a bare KeyboardInterrupt (ray/_raylet.pyx, check_status: IsInterrupted -> KeyboardInterrupt()): a
        # SIGTERM, or a `signals.stop(reason)`, during a Ray task's wait arrives here without its signum or reason,
        # so the handlers' record is read instead (a SIGTERM mid-retrain was reported as SIGINT, exit 130, before).
        handlers = sys.modules.get("study.cluster.signals")
        reason = handlers.reason() if handlers else None
        if isinstance(reason, Exception) and reason is not exc:
            return _error_code(reason)
        signum = getattr(exc, "signum", None) or (handlers.received() if handlers else None) or signal.SIGINT
        print(f"error: stopped by {signal.Signals(signum).name} (continue with --resume)", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        return _error_code(exc)
    finally:
        if stopping is not None:
            stopping()


def _error_code(exc: Exception) -> int:
    """One line and exit 2 for bad input, 1 for a failing volume; anything else is a bug: its traceback."""
    if isinstance(exc, user_errors()):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, WriteError):  # a full or failing volume: not bad input, but one line says it all
        print(f"error: {exc}", file=sys.stderr)
        return 1
    raise exc


def _start_command():
    """Install the signal handlers and open the output-lock session; returns what undoes both (and shuts down the
    local Ray the command started, so that a stopped command leaves no Ray process behind)."""

    signals.install()
    lock.begin_session()

    def stop() -> None:
        try:
            if signals.received() is not None:
                session.shutdown_if_started()
        finally:
            lock.end_session()
            signals.uninstall()

    return stop


def entrypoint() -> None:
    code = main()
    if "study.cluster.signals" in sys.modules:  # a command ran (not just --help / bad arguments)

        # A SIGTERM now (a pod stopped just as the command finished) would kill the process half-way through Ray's
        # shutdown (raylet and GCS left behind) or its teardown, exit -15, though the work was done and recorded.
        signals.ignore_until_exit()
        # The local Ray this command started, shut down here rather than by Ray's atexit hook. One window stays:
        # inside ray.shutdown, Ray's core worker resets SIGTERM to SIG_DFL at the C level (RayLog::
        # UninstallSignalAction) before it stops raylet and GCS, with no hook in between.
        session.shutdown_if_started()
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
