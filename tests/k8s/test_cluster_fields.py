"""The cluster fields of the KubeRay deployment (issue 12): a GPU-less head that trains nothing, GPU workers that
carry the training, the study storage passed by the RayJob entrypoint, data-parallel trials that fit the worker
pods, and the ImageNet overlay tracking the packaged config. Rendered offline with ``kubectl kustomize``, like
tests/k8s/test_manifests.py (which validates schemas, references and security of the same renders)."""

from __future__ import annotations

import copy
import functools
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base"} | {
    p.parent.name: p.parent for p in sorted((K8S / "overlays").glob("*/kustomization.yaml"))
}
GPU = "nvidia.com/gpu"
# Keys the imagenet overlay may set differently from pipelines/configs/imagenet_resnet50.yaml: where things run.
CLUSTER_KEYS = {"data.streaming", "data.loader_workers", "train.workers", "train.device", "train.amp",
                "train.channels_last", "search.resources_per_trial", "search.max_concurrent", "search.storage"}


@functools.cache
def _rendered(name: str) -> str:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH: cannot render k8s/ (CI installs kubectl; see .ci/run)")
    proc = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def rayjob(name: str) -> dict:
    (job,) = [d for d in yaml.safe_load_all(_rendered(name)) if d and d["kind"] == "RayJob"]
    return copy.deepcopy(job)


def pipeline_text(name: str) -> str:
    (cm,) = [d for d in yaml.safe_load_all(_rendered(name))
             if d and d["kind"] == "ConfigMap" and "pipeline.yaml" in d.get("data", {})]
    return cm["data"]["pipeline.yaml"]


def entrypoint_sets(job: dict) -> list[str]:
    tokens = shlex.split(job["spec"]["entrypoint"])
    return [tokens[i + 1] for i, t in enumerate(tokens) if t == "--set"]


def pipeline_config(name: str, job: dict | None = None) -> Any:
    from study.config.load import apply_overrides, from_dict

    job = job or rayjob(name)
    return from_dict(apply_overrides(yaml.safe_load(pipeline_text(name)), entrypoint_sets(job)))


def _gpus(container: dict, part: str) -> float:
    return float((container.get("resources") or {}).get(part, {}).get(GPU, 0))


def _cpus(container: dict) -> float:
    value = str(container["resources"]["limits"]["cpu"])
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


# ---------------------------------------------------------------------------------------------------------------
# Checks (raise AssertionError naming the field)


def check_head_trains_nothing(job: dict) -> None:
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    params = head.get("rayStartParams") or {}
    assert params.get("num-cpus") == "0", f"head rayStartParams num-cpus={params.get('num-cpus')!r} (must be \"0\")"
    assert params.get("num-gpus") == "0", f"head rayStartParams num-gpus={params.get('num-gpus')!r} (must be \"0\")"
    spec = head["template"]["spec"]
    for c in spec["containers"]:
        for part in ("requests", "limits"):
            assert _gpus(c, part) == 0, f"head container {c['name']} {part} a GPU"
    assert not any(t.get("key") == GPU for t in spec.get("tolerations", [])), "head tolerates the GPU taint"
    assert not any(k.startswith("nvidia.com/") for k in (spec.get("nodeSelector") or {})), "head selects GPU nodes"


def check_workers_carry_training(job: dict, cfg: Any) -> None:
    """Workers offer what trials ask for: GPUs iff trials use GPUs; requests = limits; no zeroed worker resources."""
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert groups, "no worker group"
    wants_gpu = cfg.search.resources_per_trial.gpu > 0
    for g in groups:
        c = g["template"]["spec"]["containers"][0]
        assert _gpus(c, "limits") == _gpus(c, "requests"), f"{g['groupName']}: GPU requests != limits"
        assert (_gpus(c, "limits") > 0) == wants_gpu, f"{g['groupName']}: GPUs {_gpus(c, 'limits'):g} vs trials' " \
            f"gpu={cfg.search.resources_per_trial.gpu:g}"
        params = g.get("rayStartParams") or {}
        assert params.get("num-cpus") != "0" and params.get("num-gpus") != "0", f"{g['groupName']} offers nothing"


def check_storage_from_entrypoint(job: dict, cfg: Any) -> None:
    sets = [s for s in entrypoint_sets(job) if s.startswith("search.storage=")]
    assert len(sets) == 1, f"the entrypoint passes no --set search.storage=... ({job['spec']['entrypoint']!r})"
    uri = sets[0].split("=", 1)[1]
    assert uri and cfg.search.storage == uri


def check_trials_fit(job: dict, cfg: Any) -> None:
    """Data-parallel trials fit the cluster at its largest and `search.max_concurrent` never exceeds what it holds
    (study.training.distributed.max_concurrent_trials), so trials do not wait on each other's placement groups."""
    from study.config.schema import ConfigError
    from study.config.validate import validate_workers
    from study.training.distributed import max_concurrent_trials

    try:
        validate_workers(cfg)
    except ConfigError as exc:
        raise AssertionError(str(exc)) from None
    cluster = {"CPU": 0.0, "GPU": 0.0}
    per_pod = []
    for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        c = g["template"]["spec"]["containers"][0]
        cluster["CPU"] += _cpus(c) * g["maxReplicas"]
        cluster["GPU"] += _gpus(c, "limits") * g["maxReplicas"]
        per_pod.append((_cpus(c), _gpus(c, "limits")))
    res, w = cfg.search.resources_per_trial, cfg.train.workers
    if w > 1 and res.gpu > 0:
        # NCCL ranks of one trial on one node: the pod must hold all of a trial's GPUs.
        assert any(gpus >= w * res.gpu and cpus >= w * res.cpu for cpus, gpus in per_pod), \
            f"no worker pod holds a trial's {w} x {res.gpu:g} GPU, {w} x {res.cpu:g} CPU"
    fits = max_concurrent_trials(cfg, cluster)
    assert cfg.search.max_concurrent <= fits, f"search.max_concurrent={cfg.search.max_concurrent} > {fits} trials " \
        f"the workers hold at once ({cluster['GPU']:g} GPUs, {cluster['CPU']:g} CPUs; train.workers={w})"


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in CLUSTER_KEYS and k != "space":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_head_is_gpu_less_and_schedules_no_training(name: str) -> None:
    check_head_trains_nothing(rayjob(name))


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_workers_carry_the_training(name: str) -> None:
    job = rayjob(name)
    cfg = pipeline_config(name, job)
    check_workers_carry_training(job, cfg)
    check_trials_fit(job, cfg)


@pytest.mark.parametrize("name", sorted(set(KUSTOMIZATIONS) - {"base"}))
def test_entrypoint_passes_the_storage_uri(name: str) -> None:
    job = rayjob(name)
    cfg = pipeline_config(name, job)
    check_storage_from_entrypoint(job, cfg)
    assert "storage:" not in "".join(line.split("#")[0] for line in pipeline_text(name).splitlines(True)), \
        f"{name}: the storage is set in two places (pipeline.yaml and the entrypoint)"
    assert cfg.search.storage.startswith("/mnt/cutmix/" if name == "cpu" else "s3://")


def test_imagenet_overlay_runs_data_parallel_streaming_trials() -> None:
    job = rayjob("imagenet")
    cfg = pipeline_config("imagenet", job)
    assert cfg.data.name == "imagefolder" and cfg.data.streaming, "1.28 M images must stream, not load"
    assert cfg.train.workers == 8 and cfg.search.resources_per_trial.gpu == 1
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["minReplicas"] == group["maxReplicas"] == 2
    assert _gpus(group["template"]["spec"]["containers"][0], "limits") == 8
    assert cfg.search.max_concurrent == 2
    # Everything but where-it-runs equals the packaged config.
    packaged = _flat(yaml.safe_load((REPO / "pipelines" / "configs" / "imagenet_resnet50.yaml").read_text()))
    overlay = _flat(yaml.safe_load(pipeline_text("imagenet")))
    differ = {k for k in set(packaged) | set(overlay) if packaged.get(k) != overlay.get(k)} - CLUSTER_KEYS
    assert not differ, f"imagenet overlay drifts from pipelines/configs/imagenet_resnet50.yaml: {sorted(differ)}"


# Negative tests: the checks fail on broken manifests.

def _head_params(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]


def _head_container(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("mutate, match", [
    (lambda job: _head_params(job).__setitem__("num-cpus", "4"), "num-cpus"),
    (lambda job: _head_params(job).pop("num-gpus"), "num-gpus"),
    (lambda job: _head_container(job)["resources"]["limits"].__setitem__(GPU, "1"), "limits a GPU"),
    (lambda job: job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"].__setitem__(
        "tolerations", [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]), "GPU taint"),
])
def test_rejects_a_head_that_could_train(mutate, match: str) -> None:
    job = rayjob("gpu")
    mutate(job)
    with pytest.raises(AssertionError, match=match):
        check_head_trains_nothing(job)


def test_rejects_missing_storage_and_oversubscribed_trials() -> None:
    import dataclasses

    job = rayjob("imagenet")
    cfg = pipeline_config("imagenet", job)
    no_set = copy.deepcopy(job)
    no_set["spec"]["entrypoint"] = no_set["spec"]["entrypoint"].replace(
        "--set search.storage=s3://cutmix-study/imagenet/tune", "")
    with pytest.raises(AssertionError, match="no --set search.storage"):
        check_storage_from_entrypoint(no_set, cfg)
    search = dataclasses.replace(cfg.search, max_concurrent=3)
    with pytest.raises(AssertionError, match="max_concurrent=3 > 2"):
        check_trials_fit(job, dataclasses.replace(cfg, search=search))
    big = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=16, batch_size=256))
    with pytest.raises(AssertionError, match="no worker pod holds"):
        check_trials_fit(job, big)
    frac = dataclasses.replace(cfg, search=dataclasses.replace(
        cfg.search, resources_per_trial=dataclasses.replace(cfg.search.resources_per_trial, gpu=0.5)))
    with pytest.raises(AssertionError, match="whole GPUs"):
        check_trials_fit(job, frac)
    cpu_job, cpu_cfg = rayjob("cpu"), pipeline_config("cpu")
    cpu_job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"][GPU] = "1"
    with pytest.raises(AssertionError, match="GPU requests != limits"):
        check_workers_carry_training(cpu_job, cpu_cfg)
