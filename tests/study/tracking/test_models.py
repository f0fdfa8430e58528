"""The export stage's MLflow models: `mlflow.pytorch.log_model` with signature and input example, registered with the
alias `champion`, loadable with `mlflow.pytorch.load_model("models:/<name>@champion")` (a real SQLite store)."""

from __future__ import annotations

import mlflow
import pytest
import torch

from pipelines import export_stage
from study.config.load import load_config
from study.data.registry import load_data
from study.tracking.models import load_torch_model
from study.tracking.store import Tracker
from tests.study.test_export import NUM_CLASSES, make_run

OVERRIDES = ["data.image_size=16", "model.arch=cnn", "model.width=8", "name=champ", "export.registered_model=digit-net"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("champ")
    run_dir, model = make_run(root, OVERRIDES[1:3] + ["name=champ"], steps=2,
                              extra_ckpt={"normalisation": {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7]}})
    tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}", root / "out")
    result = export_stage.run(load_config(None, OVERRIDES), root / "out", tracker, source=str(run_dir))
    return tracker, result, model


def test_the_champion_classifier_loads_and_predicts_like_the_trained_network(exported):
    tracker, result, model = exported
    assert result.registered_model["uri"] == "models:/digit-net@champion"
    loaded = load_torch_model(tracker.uri, "models:/digit-net@champion")
    images = load_data(load_config(None, OVERRIDES).data).test.images[:64].float() / 255.0  # uint8 -> [0, 1]
    mean, std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1), torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    with torch.no_grad():
        got, want = loaded(images), model((images - mean) / std)
    assert got.shape == (64, NUM_CLASSES) and torch.allclose(got, want, atol=1e-5)


def test_the_backbone_is_registered_beside_it_with_signature_and_example(exported):
    tracker, result, model = exported
    client = tracker.client
    version = client.get_model_version_by_alias("digit-net-backbone", "champion")
    assert version.run_id == result.manifest["mlflow_run_id"] and version.tags["arch"] == "cnn"
    assert version.tags["sha256.backbone.pt"] == result.manifest["files"]["backbone.pt"]["sha256"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracker.uri)
    try:
        info = mlflow.models.get_model_info(result.registered_model["backbone"]["model_uri"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert info.signature is not None and info.saved_input_example_info is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 16, 16)  # any batch size
    backbone = load_torch_model(tracker.uri, "models:/digit-net-backbone@champion")
    with torch.no_grad():
        features = backbone(torch.rand(3, 3, 16, 16))
    assert features.shape[:2] == (3, result.manifest["channels"][-1])
    # The torchvision-strict files and the manifest stay as the export run's artifacts.
    names = {a.path for a in client.list_artifacts(version.run_id, "backbone")}
    assert {"backbone/backbone.pt", "backbone/backbone.safetensors", "backbone/manifest.json"} <= names
