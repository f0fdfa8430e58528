"""Finding a pipeline's MLflow runs again from the tracking store alone, when the output directory's own record of
them (`study_run.json`, the stage summaries) is gone: a RayJob retried on a fresh cluster whose `--output` was not
durable, or a directory deleted by hand while Tune's storage and the tracking server were kept.

Every stage run carries `cutmix.stage` and `cutmix.output` (the resolved output directory), trial runs
`ray.trial_id` under their study's run (`mlflow.parentRunId`), and retrain/evaluate children their parent: the
newest run with the stage's tags is the one a resumed stage continues, so it never opens a second parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.tracking.store import end_run, find_run, set_tags


def find_stage_run(client: Any, experiment_id: str, stage: str, output: str | Path) -> str | None:
    """The newest (not deleted) `stage` run that wrote to `output`, or None. `output` is compared resolved, as
    `Tracker.stage_run` tags it."""
    return find_run(client, experiment_id, {"cutmix.stage": stage, "cutmix.output": str(Path(output).resolve())})


def stop_open_children(client: Any, experiment_id: str, parent_run_id: str, status: str = "KILLED") -> list[str]:
    """End every child run of `parent_run_id` still RUNNING (trials of a study stopped by a signal) with `status`,
    tagged `cutmix.trial_status=interrupted` for trials; returns their run ids. A resumed study finds and reopens
    them by their `ray.trial_id` tag."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                              "attributes.status = 'RUNNING'", max_results=10000)
    for run in runs:
        if "ray.trial_id" in run.data.tags:
            set_tags(client, run.info.run_id, {"cutmix.trial_status": "interrupted"})
        end_run(client, run.info.run_id, status)
    return [r.info.run_id for r in runs]
