"""`cutmix-study SUBCOMMAND [--config FILE] [--set key=value ...] [--output DIR]`.

Exit codes (DESIGN.md section 3): 0 success, 2 bad input (config, paths, data) with one line
`error: <what> (<allowed>)` on stderr and no traceback, 1 a failure while running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

SUBCOMMANDS = ("run", "study", "retrain", "evaluate", "export", "detect", "train", "budget")


# `--from` of each stage that has one: what it may name (pipelines.common.resolve_source resolves it for all).
FROM_HELP = {
    "retrain": "a study output directory or the study's MLflow run id (default: the output directory)",
    "evaluate": "a study output directory after retrain, its retrain/ directory, or a retrain MLflow run id",
    "export": "a study output directory after retrain, a run directory, or a retrain MLflow run id",
    "detect": "an export directory, an output directory holding export/, or an export MLflow run id",
}


class UsageError(ValueError):
    """Bad command-line input; one-line message."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit code 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cutmix-study", description="CutMix hyperparameter studies: study, retrain, export, "
                     "detect. With no --config the embedded digits default runs on the CPU.")
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
        if name in FROM_HELP:
            flags = ("--from", "--backbone") if name == "detect" else ("--from",)  # --backbone: the old name
            p.add_argument(*flags, dest="source", default=None, help=FROM_HELP[name])
        if name == "detect":
            p.add_argument("--data", default=None, help="'synthetic' or a Pascal VOC root (holding VOCdevkit/)")
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2). Imported late so `--help` stays fast."""
    from study.checkpoint import CheckpointError
    from study.config.schema import ConfigError
    from study.data.bundle import DataError

    errors: list[type[BaseException]] = [UsageError, ConfigError, DataError, CheckpointError]
    for module, name in (("study.export", "ExportError"), ("study.data.voc", "DetectionDataError"),
                         ("pipelines.results", "ResultError"), ("study.tracking.store", "TrackingError"),
                         ("study.metric_names", "EvaluationError"), ("study.cluster.lock", "LockError"),
                         ("study.cluster.capacity", "PlacementError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def dispatch(args: argparse.Namespace) -> int:
    """`run` chains the stages; every other subcommand is one stage through the same door (`stage_main`)."""
    from importlib import import_module

    from pipelines.common import stage_main

    module = import_module(f"pipelines.{args.command}_stage")
    return int(module.main(args) or 0) if args.command == "run" else stage_main(module, args)


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
        return dispatch(args)
    except KeyboardInterrupt as exc:
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name} (continue with --resume)", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        from study.atomic import WriteError

        if isinstance(exc, user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, WriteError):  # a full or failing volume: not bad input, but one line says it all
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        if stopping is not None:
            stopping()


def _start_command():
    """Install the signal handlers and open the output-lock session; returns what undoes both (and shuts down the
    local Ray the command started, so that a stopped command leaves no Ray process behind)."""
    from study.cluster import lock, session, signals

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
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
