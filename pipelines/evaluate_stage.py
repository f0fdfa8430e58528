"""`cutmix-study evaluate`: placeholder until the evaluation library lands (this commit reshapes the stages)."""

from __future__ import annotations

from pipelines.results import EvaluateResult


def run(cfg, out_dir, tracker, *, source=None, resume=False, overwrite=False) -> EvaluateResult:
    raise NotImplementedError


def format_report(result: EvaluateResult) -> str:
    return ""
