"""Models as MLflow models: `mlflow.pytorch.log_model` with a signature and an input example, registered, aliased.

A model logged here has an `MLmodel` file, a signature inferred from the input example and the model's output on it
(`mlflow.models.infer_signature`), the example itself, and pinned requirements, so
`mlflow.pytorch.load_model("models:/<name>@champion")` loads it in any environment with torch. MLflow 3 stores it
as a LoggedModel (the runs table's Models column; `runs` outputs) in torch.export's `pt2` format (MLflow's default:
a graph, no pickled code), with a dynamic batch dimension.

`mlflow.pytorch.log_model` is a fluent call: it reads the global tracking URI and the active experiment. The
pipeline uses explicit clients, so `_fluent` points MLflow's globals at the run's store and experiment for the
duration of the call and restores them afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import mlflow

CHAMPION = "champion"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    model_uri: str  # models:/<model id> (the LoggedModel)
    alias: str

    @property
    def alias_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


@contextlib.contextmanager
def _fluent(uri: str, experiment_id: str) -> Iterator[None]:
    """mlflow's fluent API pointed at `uri` for the block, and the process left exactly as it was afterwards.

    `mlflow.set_tracking_uri` / `set_registry_uri` also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for
    subprocesses, so "restoring" the previous *resolved* URI with them would leak a concrete URI into the
    environment: every later MlflowClient (registry) and every later CLI call in this process (which reads
    $MLFLOW_TRACKING_URI) would then talk to this store. So the module globals and the variables are saved raw
    and put back raw."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    saved_env = {k: os.environ.get(k) for k in names}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id  # read by log_model when no run is active
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def requirements() -> list[str]:
    """What loading the model needs, pinned to what logged it (no local version label: `2.14.1`, not
    `2.14.1+cu130`, so a CPU or other CUDA build of the same release satisfies it)."""
    return [f"torch=={version('torch').split('+')[0]}"]


def log_torch_model(client: mlflow.MlflowClient, run_id: str, experiment_id: str, model: Any, name: str,
                    input_example: Any, *, registered_name: str, alias: str = CHAMPION,
                    tags: Mapping[str, Any] | None = None) -> RegisteredModel:
    """Log `model` (a torch.nn.Module in eval mode) as `name` of run `run_id`, with the signature of
    `model(input_example)` (a float32 numpy array, e.g. [2, C, H, W]), register it as a new version of
    `registered_name`, tag that version with `tags`, and point `alias` at it."""
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, output)
    chatter = io.StringIO()
    with _fluent(client.tracking_uri, experiment_id), contextlib.redirect_stderr(chatter):
        info = mlflow.pytorch.log_model(model, name=name, signature=signature, input_example=input_example,
                                        run_id=run_id, pip_requirements=requirements(),
                                        registered_model_name=registered_name,
                                        tags={k: str(v) for k, v in (tags or {}).items()})
    # The registry prints "Successfully registered model ..." / "Created version ..." to stderr (mlflow's eprint);
    # the export stage says the same on stdout. Anything else printed there is passed on. (MLflow's logging
    # handlers keep the original stderr, so its warnings are not caught here.)
    for line in chatter.getvalue().splitlines():
        if not line.startswith(("Successfully registered model", "Created version", "Registered model")):
            print(line, file=sys.stderr)
    version = str(info.registered_model_version)
    for k, v in (tags or {}).items():
        client.set_model_version_tag(registered_name, version, k, str(v)[:5000])
    client.set_registered_model_alias(registered_name, alias, version)
    return RegisteredModel(registered_name, version, info.model_uri, alias)


def load_torch_model(uri: str, model_uri: str) -> Any:
    """`mlflow.pytorch.load_model(model_uri)` against the store `uri` (e.g. `models:/name@champion`)."""
    with _fluent(uri, os.environ.get("MLFLOW_EXPERIMENT_ID", "0")):
        return mlflow.pytorch.load_model(model_uri)
