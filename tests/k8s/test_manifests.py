"""Offline checks of the Kubernetes deployment (k8s/) and the pipeline image (Dockerfile): every kustomization
rendered and validated (schemas, links between objects, policy; see validators.py for what each check enforces),
and negative tests that push deliberately broken manifests through the same validators and expect them to fail.
"""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest

from tests.k8s.validators import (
    K8S,
    KUSTOMIZATIONS,
    REPO,
    SECRETS_DIR,
    SENSITIVE_NAME,
    ManifestError,
    admitted_pods,
    check_dockerfile,
    check_network_policies,
    check_no_literal_credentials,
    check_rayjob_contract,
    check_references,
    check_security,
    external_secrets,
    find,
    obj_id,
    one,
    openapi_to_jsonschema,
    ray_cluster_spec,
    ray_pin,
    ray_pods,
    render,
    render_text,
    selector_matches,
    validate_core,
    validate_crd,
    validate_embedded_pod_templates,
    validate_object,
    validate_ray,
)

# ---------------------------------------------------------------------------------------------------------------
# Tests: the rendered kustomizations


@pytest.fixture(scope="module")
def external() -> dict[str, dict[str, str]]:
    return external_secrets()


def test_layout() -> None:
    assert {"base", "cpu", "gpu"} <= set(KUSTOMIZATIONS), f"kustomizations found: {sorted(KUSTOMIZATIONS)}"
    assert (K8S / "README.md").is_file()
    assert not list(K8S.rglob("ray.io_*.yaml")), "the KubeRay CRDs are read from ../shared, never copied here"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renders_and_validates(name: str) -> None:
    objs = render(name)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "RayJob", "Deployment", "StatefulSet", "Service", "NetworkPolicy", "ConfigMap"} <= kinds
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {"cutmix-study"}, namespaces
    for obj in objs:
        validate_object(obj)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_references_resolve(name: str, external: dict) -> None:
    check_references(render(name), external)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_security(name: str) -> None:
    objs = render(name)
    check_security(objs)
    check_no_literal_credentials(objs)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_network_policies(name: str) -> None:
    objs = render(name)
    check_network_policies(objs)
    postgres = one(objs, "StatefulSet", "postgres")
    mlflow = one(objs, "Deployment", "mlflow")
    head = f"{obj_id(one(objs, 'RayJob'))}[head]"  # its driver keeps the Optuna study in database `optuna`
    assert admitted_pods(objs, postgres["spec"]["template"]["metadata"]["labels"]) == {f"{obj_id(mlflow)}[pod]", head}
    # The UI ingress: an ingress controller's pods, by namespace and pod label.
    peers = [peer for np in find(objs, "NetworkPolicy")
             if selector_matches(np["spec"]["podSelector"], mlflow["spec"]["template"]["metadata"]["labels"])
             for rule in np["spec"].get("ingress", []) for peer in rule.get("from", [])]
    assert any("namespaceSelector" in p and "podSelector" in p for p in peers), "no rule for the ingress controller"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rayjob_contract(name: str, external: dict) -> None:
    objs = render(name)
    cfg = check_rayjob_contract(objs, external)
    rayjob = one(objs, "RayJob")
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert cluster["enableInTreeAutoscaling"] is True
    assert (cluster.get("authOptions") or {}).get("mode") == "token", "Ray 2.60 runs with token auth"
    for group in cluster["workerGroupSpecs"]:
        assert {"minReplicas", "maxReplicas"} <= set(group) and group["maxReplicas"] >= 1
    resources = cfg.search.resources_per_trial
    if name == "cpu":
        assert resources.gpu == 0
        assert "nvidia.com/gpu" not in render_text(name)
        assert not any(p.spec.get("tolerations") for p in ray_pods(objs))
        assert not cfg.search.storage.startswith("s3://"), "the cpu overlay keeps the study on a PVC"
    else:
        assert cfg.search.storage.startswith("s3://"), "base and gpu keep the study on S3"
        workers = [p for p in ray_pods(objs) if p.role.startswith("worker:")]
        assert all(p.spec["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") for p in workers)
    if name == "gpu":
        assert 0 < resources.gpu < 1, "the gpu overlay packs several trials per GPU"
        assert all(p.spec.get("nodeSelector") for p in ray_pods(objs) if p.role.startswith("worker:"))


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_the_optuna_study_lives_in_the_postgresql_database_the_manifests_create(name: str) -> None:
    """The head, and only the head (the workers never touch Optuna), gets $OPTUNA_STORAGE from Secret cutmix-optuna;
    its example points at database `optuna` on the postgres Service, which the StatefulSet's initdb ConfigMap creates
    on first start (the SQL itself runs on a real PostgreSQL in tests/pipelines/test_study_stage.py)."""
    objs = render(name)
    for pod in ray_pods(objs):
        refs = {(e.get("secretRef") or {}).get("name") for c in pod.containers for e in c.get("envFrom", [])}
        assert ("cutmix-optuna" in refs) == (pod.role == "head"), f"{pod}: envFrom {sorted(map(str, refs))}"
    postgres = one(objs, "StatefulSet", "postgres")
    (mount,) = [m for m in postgres["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                if m["mountPath"] == "/docker-entrypoint-initdb.d"]
    (volume,) = [v for v in postgres["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    (initdb,) = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"] == volume["configMap"]["name"]]
    assert [sql.strip().splitlines()[-1] for sql in initdb["data"].values()] == ["CREATE DATABASE optuna;"]
    example = (SECRETS_DIR / "cutmix-optuna.example.env").read_text()
    assert re.search(r"postgresql\+psycopg2://[^@]+@postgres\.cutmix-study\.svc\.cluster\.local:5432/optuna\b", example)


def test_raycluster_schema() -> None:
    """The RayJob's cluster spec is also a valid stand-alone RayCluster (e.g. for an interactive debug cluster)."""
    rayjob = one(render("base"), "RayJob")
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "cutmix-debug"},
               "spec": copy.deepcopy(rayjob["spec"]["rayClusterSpec"])}
    validate_ray(cluster)
    cluster["spec"]["workerGroupSpecs"][0]["grupName"] = "typo"
    with pytest.raises(ManifestError, match="grupName"):
        validate_crd(cluster)


def test_external_secrets_documented(external: dict) -> None:
    """Each documented Secret is used, ships no values for sensitive keys, and the README shows how to create it."""
    assert external, "k8s/secrets/*.example.env documents no Secret"
    used: set[str] = set()
    for name in KUSTOMIZATIONS:
        text = render_text(name)
        used |= {s for s in external if re.search(rf"name: {re.escape(s)}\n", text)}
    assert used == set(external), f"documented but unused: {sorted(set(external) - used)}"
    readme = (K8S / "README.md").read_text()
    for secret, keys in external.items():
        for key, value in keys.items():
            assert not (SENSITIVE_NAME.search(key) and value), f"{secret}.example.env ships a value for {key}"
        assert f"create secret generic {secret}" in readme, f"k8s/README.md does not show how to create {secret}"
    ignore = (SECRETS_DIR / ".gitignore").read_text()
    assert "*.env" in ignore and "!*.example.env" in ignore


def test_dockerfile() -> None:
    check_dockerfile((REPO / "Dockerfile").read_text(), (REPO / "constraints.txt").read_text())
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert rules[0] == "*", ".dockerignore should be an allow-list (start with *)"
    assert any(".env" in r for r in rules), ".dockerignore must keep *.env files out of the build context"


def test_ray_pin_matches_image() -> None:
    """The image's ray (constraints.txt) is the Ray the RayJob declares and ray[default] is installed."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"ray\[[^\]]*default[^\]]*\]', pyproject), "KubeRay needs ray[default] (dashboard, job server)"
    for name in KUSTOMIZATIONS:
        assert ray_cluster_spec(one(render(name), "RayJob"))["rayVersion"] == ray_pin()


# ---------------------------------------------------------------------------------------------------------------
# Negative tests: broken manifests must fail the same checks


def _base() -> list[dict]:
    return render("base")


def _container(objs: list[dict], kind: str, name: str) -> dict:
    return one(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def test_rejects_rayjob_without_head_group() -> None:
    rayjob = one(_base(), "RayJob")
    del rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    with pytest.raises(ManifestError, match="headGroupSpec"):
        validate_crd(rayjob)


@pytest.mark.parametrize("mutate, match", [
    (lambda rj: rj["spec"]["rayClusterSpec"].__setitem__("headGroupSpecs", {}), "headGroupSpecs"),
    (lambda rj: rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("minReplicas", "two"), "two"),
    (lambda rj: rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", 2**40), "int32"),
    (lambda rj: rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "securityContext"].__setitem__("runAsNonroot", True), "runAsNonroot"),
    (lambda rj: rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"].__setitem__("cpu", ["4"]), "cpu"),
    (lambda rj: rj["spec"]["rayClusterSpec"]["autoscalerOptions"].__setitem__("version", "v3"), "v3"),
    (lambda rj: rj.__setitem__("specs", rj.pop("spec")), "specs"),
])
def test_rejects_rayjob_schema_errors(mutate, match: str) -> None:
    rayjob = one(_base(), "RayJob")
    mutate(rayjob)
    with pytest.raises(ManifestError, match=match):
        validate_crd(rayjob)


def test_accepts_int_or_string_quantities() -> None:
    rayjob = one(_base(), "RayJob")
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "cpu"] = 4
    validate_crd(rayjob)


@pytest.mark.parametrize("mutate, match", [
    (lambda rj: rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=5, maxReplicas=2),
     "minReplicas"),
    (lambda rj: rj["spec"]["rayClusterSpec"].__setitem__("rayVersion", "2.51.0"), "rayVersion"),
    (lambda rj: rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"].__setitem__(
        "restartPolicy", "Always"), "restartPolicy"),
    (lambda rj: rj["metadata"].__setitem__("name", "Cutmix_Study"), "DNS-1035"),
])
def test_rejects_kuberay_semantic_errors(mutate, match: str) -> None:
    rayjob = one(_base(), "RayJob")
    mutate(rayjob)
    with pytest.raises(ManifestError, match=match):
        validate_ray(rayjob)


def test_rejects_bad_embedded_pod_template() -> None:
    rayjob = one(_base(), "RayJob")
    rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ManifestError, match="PodTemplate/-/cutmix-study-submitter.*imagePullPolicyy"):
        validate_embedded_pod_templates(rayjob)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["spec"].__setitem__("replcas", 1), "replcas"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagePullPolicyy", "Always"),
     "imagePullPolicyy"),
    (lambda d: d["spec"].__setitem__("replicas", "two"), "two"),
    (lambda d: d["spec"].pop("selector"), "selector"),
])
def test_rejects_bad_deployment(mutate, match: str) -> None:
    deployment = one(_base(), "Deployment", "mlflow")
    mutate(deployment)
    with pytest.raises(ManifestError, match=match):
        validate_core(deployment)


def _storage_configmap(objs: list[dict]) -> str:
    return next(o["metadata"]["name"] for o in find(objs, "ConfigMap") if o["metadata"]["name"].startswith(
        "cutmix-storage"))


def test_rejects_missing_secret_key(external: dict) -> None:
    objs = _base()
    env = _container(objs, "Deployment", "mlflow")["env"]
    ref = next(e for e in env if e["name"] == "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"]
    ref["key"] = "POSTGRES_PASSWRD"
    with pytest.raises(ManifestError, match="no key 'POSTGRES_PASSWRD'"):
        check_references(objs, external)


@pytest.mark.parametrize("mutate, match", [
    (lambda objs: _container(objs, "Deployment", "mlflow")["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}), "'nope'"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["env"].append(
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": _storage_configmap(objs), "key": "NOPE"}}}),
     "'NOPE'"),
    (lambda objs: one(objs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][0][
        "configMap"].__setitem__("name", "cutmix-pipeline"), "cutmix-pipeline"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["volumeMounts"].append(
        {"name": "ghost", "mountPath": "/ghost"}), "ghost"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["env"].insert(
        0, {"name": "URI", "value": "postgresql+psycopg2://$(POSTGRES_USER)@db"}), r"\$\(POSTGRES_USER\)"),
])
def test_rejects_dangling_references(mutate, match: str, external: dict) -> None:
    objs = _base()
    mutate(objs)
    with pytest.raises(ManifestError, match=match):
        check_references(objs, external)


@pytest.mark.parametrize("mutate, match", [
    (lambda objs: _container(objs, "Deployment", "mlflow")["securityContext"].__setitem__("runAsUser", 0),
     "runAsUser 0"),
    (lambda objs: one(objs, "StatefulSet", "postgres")["spec"]["template"]["spec"]["securityContext"].pop(
        "runAsNonRoot") and _container(objs, "StatefulSet", "postgres")["securityContext"].pop("runAsNonRoot"),
     "runAsNonRoot"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["securityContext"].__setitem__(
        "allowPrivilegeEscalation", True), "allowPrivilegeEscalation"),
    (lambda objs: _container(objs, "Deployment", "mlflow").pop("livenessProbe"), "livenessProbe"),
    (lambda objs: one(objs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]["securityContext"].__setitem__("readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
    (lambda objs: _container(objs, "Deployment", "mlflow").__setitem__("image", "mlflow:latest"), "latest"),
])
def test_rejects_insecure_pods(mutate, match: str) -> None:
    objs = _base()
    mutate(objs)
    with pytest.raises(ManifestError, match=match):
        check_security(objs)


@pytest.mark.parametrize("mutate, match", [
    (lambda objs: _container(objs, "Deployment", "mlflow")["env"].append(
        {"name": "MLFLOW_AUTH_ADMIN_PASSWORD", "value": "hunter2"}), "literal value"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["env"].append(
        {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql+psycopg2://mlflow:hunter2@postgres/mlflow"}),
     "literal password"),
    (lambda objs: objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "x"},
                               "stringData": {"POSTGRES_PASSWORD": "hunter2"}}), "Secrets"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["args"].__setitem__(
        0, "export PGPASSWORD=hunter2; exec mlflow server"), "secret-like"),
])
def test_rejects_literal_credentials(mutate, match: str) -> None:
    objs = _base()
    mutate(objs)
    with pytest.raises(ManifestError, match=match):
        check_no_literal_credentials(objs)


@pytest.mark.parametrize("mutate, match", [
    (lambda objs: one(objs, "NetworkPolicy", "postgres-ingress")["spec"]["ingress"][0]["from"][0]["podSelector"][
        "matchLabels"].__setitem__("app.kubernetes.io/name", "mlfow"), "matches no pod"),
    (lambda objs: one(objs, "NetworkPolicy", "mlflow-ingress")["spec"]["podSelector"]["matchLabels"].__setitem__(
        "app.kubernetes.io/component", "server"), "podSelector matches no pod"),
    (lambda objs: one(objs, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]["ports"][0].__setitem__(
        "port", 8080), "8080"),
    (lambda objs: one(objs, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]["from"][1].__setitem__(
        "namespaceSelector", {}), "every namespace"),
    (lambda objs: one(objs, "Service", "mlflow")["spec"]["selector"].__setitem__("app.kubernetes.io/name", "mlfow"),
     "selector matches no pod"),
])
def test_rejects_selectors_matching_nothing(mutate, match: str) -> None:
    objs = _base()
    mutate(objs)
    with pytest.raises(ManifestError, match=match):
        check_network_policies(objs)


def _set_entrypoint(objs: list[dict], old: str, new: str) -> None:
    rayjob = one(objs, "RayJob")
    assert old in rayjob["spec"]["entrypoint"]
    rayjob["spec"]["entrypoint"] = rayjob["spec"]["entrypoint"].replace(old, new)


def _set_volume(objs: list[dict], name: str, volume: dict) -> None:
    """Replace the volume `name` of the RayJob's head pod."""
    spec = one(objs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (index,) = [i for i, v in enumerate(spec["volumes"]) if v["name"] == name]
    spec["volumes"][index] = volume


def _set_pipeline(objs: list[dict], old: str, new: str) -> None:
    cm = next(o for o in find(objs, "ConfigMap") if "pipeline.yaml" in o.get("data", {}))
    assert old in cm["data"]["pipeline.yaml"]
    cm["data"]["pipeline.yaml"] = cm["data"]["pipeline.yaml"].replace(old, new)


@pytest.mark.parametrize("mutate, match", [
    (lambda objs: _set_entrypoint(objs, "/etc/cutmix/pipeline.yaml", "/etc/cutmix/study.yaml"), "no key"),
    (lambda objs: _set_entrypoint(objs, "/etc/cutmix/pipeline.yaml", "/opt/pipeline.yaml"), "not under any"),
    (lambda objs: _set_entrypoint(objs, " --resume", ""), "--resume"),
    (lambda objs: _set_entrypoint(objs, ".svc.cluster.local:5000", ".svc.cluster.local:5001"), "port 5001"),
    (lambda objs: _set_entrypoint(objs, "mlflow.cutmix-study.svc", "tracking.cutmix-study.svc"), "no Service"),
    (lambda objs: _set_entrypoint(objs, "--resume", "--resume --set train.epoch=3"), "train.epoch"),
    (lambda objs: _set_pipeline(objs, "hflip: true", "hflips: true"), "hflips"),
    (lambda objs: _set_pipeline(objs, "alpha: 1.0", "alpha: -1.0"), "alpha"),
    (lambda objs: _set_pipeline(objs, "{cpu: 4, gpu: 1}", "{cpu: 4, gpu: 2}"), "GPU"),
    (lambda objs: _set_pipeline(objs, "{cpu: 4, gpu: 1}", "{cpu: 4, gpu: 0}"), "GPUs but trials use none"),
    (lambda objs: _set_pipeline(objs, "{cpu: 4, gpu: 1}", "{cpu: 16, gpu: 1}"), "CPUs"),
    (lambda objs: _set_pipeline(objs, "storage: s3://cutmix-study/tune", "storage: /tmp/tune"), "PVC"),
    (lambda objs: _set_pipeline(objs, "root: /mnt/datasets", "root: /data/cifar"), "data.root"),
    (lambda objs: _set_volume(objs, "work", {"name": "work", "emptyDir": {}}), "--output .* PVC"),
    (lambda objs: one(objs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]["env"][0].__setitem__("value", "http://mlflow:5000"), "MLFLOW_TRACKING_URI"),
    (lambda objs: one(objs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0].__setitem__("envFrom", []), "AWS_"),
    (lambda objs: _container(objs, "Deployment", "mlflow")["args"].__setitem__(
        0, _container(objs, "Deployment", "mlflow")["args"][0].replace(
            "mlflow.cutmix-study.svc.cluster.local:5000,", "")), "allowed-hosts"),
])
def test_rejects_broken_rayjob_contract(mutate, match: str, external: dict) -> None:
    objs = _base()
    mutate(objs)
    with pytest.raises(ManifestError, match=match):
        check_rayjob_contract(objs, external)


@pytest.mark.parametrize("old, new, match", [
    ("ARG TORCH_VERSION=2.14.1", "ARG TORCH_VERSION=2.13.0", "torch"),
    ("ARG TORCHVISION_VERSION=0.29.1", "ARG TORCHVISION_VERSION=0.29.2", "torchvision"),
    ("USER 1000:1000\nWORKDIR /home/ray\nCMD [\"cutmix-study\"", "USER 0\nWORKDIR /home/ray\nCMD [\"cutmix-study\"",
     "root"),
    ("USER 1000:1000\nWORKDIR /home/ray\nCMD [\"cutmix-study\"", "USER ray\nWORKDIR /home/ray\nCMD [\"cutmix-study\"",
     "numeric"),
    ("ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm", "ARG PYTHON_IMAGE=python:3.12-slim", "3.11"),
    ("ENV PYTHONDONTWRITEBYTECODE=1", "ENV AWS_SECRET_ACCESS_KEY=x PYTHONDONTWRITEBYTECODE=1", "secrets"),
])
def test_rejects_bad_dockerfile(old: str, new: str, match: str) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert old in text
    with pytest.raises(ManifestError, match=match):
        check_dockerfile(text.replace(old, new), (REPO / "constraints.txt").read_text())


def test_openapi_conversion() -> None:
    schema = openapi_to_jsonschema({
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "opt": {"type": "string", "nullable": True},
        },
    })
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"port": 80, "free": {"a": 1, "b": 2}, "opt": None})
    assert validator.is_valid({"port": "http"})
    assert not validator.is_valid({"port": 1.5})
    assert not validator.is_valid({"prot": 80})
    assert copy.deepcopy(schema) == schema
