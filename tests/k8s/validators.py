"""Validators for the Kubernetes deployment (k8s/) and the pipeline image (Dockerfile), used by test_manifests.py
(and by any test of k8s/ that needs to render a kustomization or check an object).

Every kustomization (k8s/base and each k8s/overlays/*) is rendered with ``kubectl kustomize`` and the output is
checked three ways:

* schema: core objects with kubernetes-validate's strict schemas (unknown fields fail, as with
  ``kubectl apply --validate=strict``) for the oldest supported and the newest known Kubernetes; RayJob/RayCluster
  with KubeRay v1.7.0's CRD schema read from ``../shared/kuberay-crds`` (OpenAPI v3 turned into JSON Schema: unknown
  fields fail where the schema has no ``x-kubernetes-preserve-unknown-fields``, int-or-string and int32/int64 are
  enforced), plus the checks KubeRay's controller makes beyond its schema; the pod templates a RayJob embeds are
  also validated as core ``PodTemplate`` objects.
* links between objects: the RayJob's ``--config`` file is a key of the mounted ConfigMap and a valid pipeline
  config whose resources, storage and paths fit the Ray pods; MLFLOW_TRACKING_URI names the MLflow Service and
  passes its ``--allowed-hosts``; every Secret/ConfigMap/PVC/volume reference resolves (external Secrets are the
  ones documented in k8s/secrets/*.example.env, with their keys); every NetworkPolicy and Service selector matches
  real pod labels.
* policy: non-root, no privilege escalation, dropped capabilities, read-only root filesystems, resources and
  probes; no literal credentials anywhere.

Entry points: ``render(name)`` (the objects of a kustomization in KUSTOMIZATIONS), ``find``/``one`` (objects by
kind and name), ``validate_object`` (schema: core or KubeRay), ``check_references``, ``check_security``,
``check_no_literal_credentials``, ``check_network_policies``, ``check_rayjob_contract`` (returns the pipeline config
the RayJob runs), ``check_dockerfile``. Each raises ManifestError (an AssertionError) listing what is wrong; a
missing kubectl skips the calling test.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SECRETS_DIR = K8S / "secrets"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"  # never copied into the repo
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
RAY_KINDS = set(CRD_FILES)

# The oldest Kubernetes we support and the newest the installed kubernetes-validate knows.
K8S_VERSIONS = tuple(sorted({"1.33", ".".join(kubernetes_validate.latest_version().split(".")[:2])},
                            key=lambda v: tuple(map(int, v.split(".")))))

KUSTOMIZATIONS = {"base": K8S / "base"} | {
    p.parent.name: p.parent for p in sorted((K8S / "overlays").glob("*/kustomization.yaml"))
}
SENSITIVE_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY|CREDENTIAL", re.I)
ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class ManifestError(AssertionError):
    """A rendered manifest breaks a rule; the message lists every problem found."""


def _fail_if(problems: list[str], what: str) -> None:
    if problems:
        raise ManifestError(f"{what}:\n  " + "\n  ".join(problems))


def obj_id(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _renderer() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@functools.cache
def render_text(name: str) -> str:
    cmd = _renderer()
    if cmd is None:
        pytest.skip("kubectl (or kustomize) is not on PATH: cannot render k8s/ (CI installs kubectl; see .ci/run)")
    proc = subprocess.run([*cmd, str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ManifestError(f"{' '.join(cmd)} {KUSTOMIZATIONS[name]} failed:\n{proc.stderr}")
    return proc.stdout


def render(name: str) -> list[dict]:
    """The objects of one kustomization, as fresh (mutable) dicts."""
    return [d for d in yaml.safe_load_all(render_text(name)) if d]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[obj_id(o) for o in found]}"
    return found[0]


# ---------------------------------------------------------------------------------------------------------------
# Schema validation: core objects


def validate_core(obj: dict) -> None:
    """Strict schema validation (unknown fields fail) against every version in K8S_VERSIONS."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ManifestError(f"{obj_id(obj)} invalid for Kubernetes {version} at {path or '<root>'}: "
                                f"{exc.message}") from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise ManifestError(f"{obj_id(obj)}: {exc.message}") from None


# ---------------------------------------------------------------------------------------------------------------
# Schema validation: KubeRay CRDs (OpenAPI v3 -> JSON Schema)

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def openapi_to_jsonschema(node: Any) -> Any:
    """A structural OpenAPI v3 schema of a CRD as JSON Schema with Kubernetes' semantics.

    * ``x-kubernetes-int-or-string`` (or ``format: int-or-string``): integer or string.
    * ``nullable: true``: null is allowed as well.
    * An object that lists ``properties`` and has no ``x-kubernetes-preserve-unknown-fields`` gets
      ``additionalProperties: false``: the API server prunes such fields, and strict field validation (kubectl's
      default) rejects them, so a misspelt field must fail here too.
    * ``x-kubernetes-embedded-resource``: apiVersion/kind/metadata are allowed.
    * CEL rules (``x-kubernetes-validations``) and list-type markers are not evaluated.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    for key in ("properties", "patternProperties", "definitions"):
        if key in out:
            out[key] = {k: openapi_to_jsonschema(v) for k, v in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict | list):
            out[key] = openapi_to_jsonschema(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [openapi_to_jsonschema(n) for n in out[key]]
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        out.pop("type", None)
        if out.get("format") == "int-or-string":
            out.pop("format")
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource") and "properties" in out:
        for key in ("apiVersion", "kind"):
            out["properties"].setdefault(key, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if "properties" in out and "additionalProperties" not in out and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD {path} is missing (expected ../shared/kuberay-crds next to the repository)")
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=FORMATS)


def validate_crd(obj: dict) -> None:
    if obj.get("apiVersion") != "ray.io/v1":
        raise ManifestError(f"{obj_id(obj)}: apiVersion {obj.get('apiVersion')!r} (KubeRay v1.7 serves ray.io/v1)")
    errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(map(str, e.path)))
    _fail_if([f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors],
             f"{obj_id(obj)} does not match the KubeRay v1.7.0 CRD")


DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def ray_pin() -> str:
    pins = constraint_pins()
    assert "ray" in pins, "constraints.txt pins no ray version"
    return pins["ray"]


def ray_cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


def validate_kuberay_semantics(obj: dict) -> None:
    """What KubeRay's controller rejects or mishandles beyond the schema (ray-operator/.../utils/validation.go)."""
    problems: list[str] = []
    name = obj["metadata"]["name"]
    limit = 47 if obj["kind"] == "RayJob" else 53
    if not DNS1035.match(name) or len(name) > limit:
        problems.append(f"name {name!r} must be a DNS-1035 label of at most {limit} characters")
    spec = obj["spec"]
    if obj["kind"] == "RayJob":
        if "rayClusterSpec" not in spec:
            problems.append("a RayJob here must create its cluster (spec.rayClusterSpec)")
            _fail_if(problems, obj_id(obj))
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"):
            problems.append(f"submissionMode {mode!r} is unknown")
        if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
            problems.append("SidecarMode does not support submitterPodTemplate/submitterConfig")
        if not spec.get("entrypoint", "").strip():
            problems.append("spec.entrypoint is empty")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            problems.append("suspend needs shutdownAfterJobFinishes")
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if key in spec and spec[key] <= 0:
                problems.append(f"{key} must be positive")
        if spec.get("ttlSecondsAfterFinished", 0) < 0 or spec.get("backoffLimit", 0) < 0:
            problems.append("ttlSecondsAfterFinished and backoffLimit must not be negative")
    cluster = ray_cluster_spec(obj)
    head = cluster.get("headGroupSpec") or {}
    if not head.get("template", {}).get("spec", {}).get("containers"):
        problems.append("headGroupSpec needs at least one container")
    version = cluster.get("rayVersion", "")
    if (cluster.get("authOptions") or {}).get("mode") == "token" and (not version or _version(version) < (2, 52)):
        problems.append(f"authOptions.mode=token needs rayVersion >= 2.52.0 (got {version!r})")
    if version != ray_pin():
        problems.append(f"rayVersion {version!r} differs from ray=={ray_pin()} in constraints.txt (the image's Ray)")
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    v2 = (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
    groups = [("head", head)] + [(g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs", [])]
    for group_name, group in groups:
        params = group.get("rayStartParams") or {}
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            problems.append(f"group {group_name}: resources set both in rayStartParams and resources")
        if "labels" in params:
            problems.append(f"group {group_name}: rayStartParams['labels'] is not supported (use labels)")
        if autoscaling and v2 and group.get("template", {}).get("spec", {}).get("restartPolicy", "Never") != "Never":
            problems.append(f"group {group_name}: autoscaler v2 needs restartPolicy Never or unset")
        if group is head:
            continue
        if not group.get("template", {}).get("spec", {}).get("containers"):
            problems.append(f"worker group {group_name} needs at least one container")
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            problems.append(f"worker group {group_name} needs minReplicas and maxReplicas without autoscaling")
        if lo is not None and hi is not None and not 0 <= lo <= hi:
            problems.append(f"worker group {group_name}: need 0 <= minReplicas ({lo}) <= maxReplicas ({hi})")
        replicas = group.get("replicas")
        if replicas is not None and lo is not None and hi is not None and not lo <= replicas <= hi:
            problems.append(f"worker group {group_name}: replicas {replicas} outside [{lo}, {hi}]")
    names = [g for g, _ in groups[1:]]
    if len(set(names)) != len(names):
        problems.append(f"worker group names repeat: {names}")
    _fail_if(problems, f"{obj_id(obj)} would be rejected by KubeRay")


def embedded_pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(role, pod template) of every pod a KubeRay object creates from our templates."""
    cluster = ray_cluster_spec(obj)
    if "headGroupSpec" in cluster:
        yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield f"worker:{group.get('groupName')}", group["template"]
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        yield "submitter", obj["spec"]["submitterPodTemplate"]


def validate_embedded_pod_templates(obj: dict) -> None:
    """The CRD embeds core PodTemplateSpecs: hold them to the upstream strict core schema as well."""
    for role, template in embedded_pod_templates(obj):
        validate_core({"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": f"{obj['metadata']['name']}-{role.replace(':', '-')}"},
                       "template": template})


def validate_ray(obj: dict) -> None:
    validate_crd(obj)
    validate_kuberay_semantics(obj)
    validate_embedded_pod_templates(obj)


def validate_object(obj: dict) -> None:
    if obj.get("kind") in RAY_KINDS:
        validate_ray(obj)
    else:
        validate_core(obj)


# ---------------------------------------------------------------------------------------------------------------
# Pods, containers, selectors


@dataclasses.dataclass
class Pod:
    """A pod template found in a rendered object."""

    owner: str
    role: str
    namespace: str
    labels: dict[str, str]
    spec: dict
    claim_templates: tuple[str, ...] = ()  # StatefulSet volumeClaimTemplates: volumes the pod gets by name

    @property
    def containers(self) -> list[dict]:
        return list(self.spec.get("initContainers", [])) + list(self.spec.get("containers", []))

    def __str__(self) -> str:
        return f"{self.owner}[{self.role}]"


def pods(objs: list[dict]) -> list[Pod]:
    out = []
    for obj in objs:
        ns = obj["metadata"].get("namespace", "default")
        if obj["kind"] in WORKLOAD_KINDS:
            tpl = obj["spec"]["template"]
            claims = tuple(t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", []))
            out.append(Pod(obj_id(obj), "pod", ns, tpl.get("metadata", {}).get("labels", {}), tpl["spec"], claims))
        elif obj["kind"] == "Pod":
            out.append(Pod(obj_id(obj), "pod", ns, obj["metadata"].get("labels", {}), obj["spec"]))
        elif obj["kind"] in RAY_KINDS:
            for role, tpl in embedded_pod_templates(obj):
                out.append(Pod(obj_id(obj), role, ns, (tpl.get("metadata") or {}).get("labels", {}), tpl["spec"]))
    return out


def ray_pods(objs: list[dict]) -> list[Pod]:
    return [p for p in pods(objs) if p.role == "head" or p.role.startswith("worker:")]


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics (an empty selector matches everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def container_ports(pod: Pod) -> set[int | str]:
    ports: set[int | str] = set()
    for c in pod.spec.get("containers", []):
        for p in c.get("ports", []):
            ports.add(p["containerPort"])
            if "name" in p:
                ports.add(p["name"])
    return ports


def env_names(container: dict) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


# ---------------------------------------------------------------------------------------------------------------
# External Secrets (created by the operator, documented in k8s/secrets/*.example.env)


def parse_env_file(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        out[key.strip()] = value
    return out


def external_secrets() -> dict[str, dict[str, str]]:
    """name -> example keys/values of every Secret the manifests expect to exist already."""
    return {p.name.removesuffix(".example.env"): parse_env_file(p.read_text())
            for p in sorted(SECRETS_DIR.glob("*.example.env"))}


# ---------------------------------------------------------------------------------------------------------------
# Cross-object checks


def check_references(objs: list[dict], external: dict[str, dict[str, str]]) -> None:
    """Every Secret/ConfigMap/PVC/volume a pod names exists (rendered, or a documented external Secret) with the key."""
    problems: list[str] = []
    configmaps = {(o["metadata"].get("namespace"), o["metadata"]["name"]): {**o.get("data", {}),
                                                                          **o.get("binaryData", {})}
                  for o in find(objs, "ConfigMap")}
    secrets = {(o["metadata"].get("namespace"), o["metadata"]["name"]): {**o.get("data", {}), **o.get("stringData", {})}
               for o in find(objs, "Secret")}
    pvcs = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in find(objs, "PersistentVolumeClaim")}

    def secret_keys(ns: str, name: str) -> set[str] | None:
        if (ns, name) in secrets:
            return set(secrets[ns, name])
        if name in external:
            return set(external[name])
        return None

    def check(kind: str, ns: str, name: str, key: str | None, optional: bool, where: str) -> None:
        keys = configmaps.get((ns, name)) if kind == "ConfigMap" else secret_keys(ns, name)
        if keys is None:
            if not optional:
                problems.append(f"{where}: {kind} {name!r} is neither rendered in {ns} nor documented in k8s/secrets/")
        elif key is not None and key not in keys:
            problems.append(f"{where}: {kind} {name!r} has no key {key!r} (has {sorted(keys)})")

    for pod in pods(objs):
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for v in volumes.values():
            where = f"{pod} volume {v['name']}"
            if "configMap" in v:
                items = v["configMap"].get("items") or [{}]
                for item in items:
                    check("ConfigMap", pod.namespace, v["configMap"]["name"], item.get("key"),
                          v["configMap"].get("optional", False), where)
            if "secret" in v:
                for item in v["secret"].get("items") or [{}]:
                    check("Secret", pod.namespace, v["secret"]["secretName"], item.get("key"),
                          v["secret"].get("optional", False), where)
            if "persistentVolumeClaim" in v and (pod.namespace, v["persistentVolumeClaim"]["claimName"]) not in pvcs:
                problems.append(f"{where}: PVC {v['persistentVolumeClaim']['claimName']!r} is not rendered")
        for c in pod.containers:
            where = f"{pod} container {c['name']}"
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in pod.claim_templates:
                    problems.append(f"{where}: mounts undefined volume {m['name']!r}")
            defined: set[str] = set()
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    ref = src["configMapRef"]
                    check("ConfigMap", pod.namespace, ref["name"], None, ref.get("optional", False), where)
                    defined |= set(configmaps.get((pod.namespace, ref["name"]), {}))
                if "secretRef" in src:
                    ref = src["secretRef"]
                    check("Secret", pod.namespace, ref["name"], None, ref.get("optional", False), where)
                    defined |= secret_keys(pod.namespace, ref["name"]) or set()
            for e in c.get("env", []):
                source = e.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    check("Secret", pod.namespace, ref["name"], ref["key"], ref.get("optional", False),
                          f"{where} env {e['name']}")
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    check("ConfigMap", pod.namespace, ref["name"], ref["key"], ref.get("optional", False),
                          f"{where} env {e['name']}")
                # The kubelet expands $(VAR) only for variables defined before this one (or by envFrom).
                for var in ENV_REF.findall(e.get("value", "")):
                    if var not in defined:
                        problems.append(f"{where} env {e['name']}: $({var}) is not defined before it")
                defined.add(e["name"])
    _fail_if(problems, "unresolved references")


def check_security(objs: list[dict]) -> None:
    """Pod Security 'restricted' plus our own rules: read-only root filesystems, resources, probes."""
    problems: list[str] = []
    for pod in pods(objs):
        psc = pod.spec.get("securityContext") or {}
        if pod.spec.get("hostNetwork") or pod.spec.get("hostPID") or pod.spec.get("hostIPC"):
            problems.append(f"{pod}: host namespaces")
        for c in pod.containers:
            sc = c.get("securityContext") or {}
            where = f"{pod} container {c['name']}"
            if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{where}: runAsUser 0")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
                problems.append(f"{where}: capabilities are not dropped (drop: [ALL])")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in (resources.get(part) or {}):
                        problems.append(f"{where}: no {part}.{res}")
            image = c.get("image", "")
            if not image or image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
                problems.append(f"{where}: image {image!r} is not pinned to a tag or digest")
            # KubeRay injects the Ray containers' probes (HTTP /api/healthz for rayVersion >= 2.53); a submitter
            # runs to completion. Everything else must declare its own.
            if pod.role == "pod" and c in pod.spec.get("containers", []):
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        problems.append(f"{where}: no {probe}")
    for obj in objs:
        if obj["kind"] in RAY_KINDS:
            cluster = ray_cluster_spec(obj)
            if _version(cluster.get("rayVersion", "0")) < (2, 53):
                problems.append(f"{obj_id(obj)}: rayVersion < 2.53 gets exec probes that need wget in the image")
            opts = cluster.get("autoscalerOptions") or {}
            if cluster.get("enableInTreeAutoscaling"):
                sc = opts.get("securityContext") or {}
                if sc.get("allowPrivilegeEscalation") is not False or "ALL" not in (sc.get("capabilities") or {}).get(
                        "drop", []) or not sc.get("readOnlyRootFilesystem"):
                    problems.append(f"{obj_id(obj)}: autoscalerOptions.securityContext is not locked down")
                head_volumes = {v["name"] for v in cluster["headGroupSpec"]["template"]["spec"].get("volumes", [])}
                for m in opts.get("volumeMounts", []):
                    if m["name"] not in head_volumes:
                        problems.append(f"{obj_id(obj)}: autoscaler mounts undefined head volume {m['name']!r}")
    _fail_if(problems, "insecure or incomplete pod specs")


URI_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@]+):([^/\s@]+)@", re.I)
ASSIGNED_SECRET = re.compile(r"(?:password|passwd|secret|token)\w*\s*[=:]\s*(\S+)", re.I)


def _is_reference(value: str) -> bool:
    """An expansion ($(VAR), ${VAR}, $VAR) or nothing at all: not a literal credential."""
    value = value.strip().strip("'\"")
    return value == "" or bool(re.fullmatch(r"\$\(\w+\)|\$\{\w+\}|\$\w+", value))


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def check_no_literal_credentials(objs: list[dict]) -> None:
    problems: list[str] = []
    for obj in objs:
        if obj["kind"] == "Secret":
            problems.append(f"{obj_id(obj)}: the manifests must not carry Secrets (create them from "
                            f"k8s/secrets/*.example.env)")
        for path, text in _strings(obj):
            for _user, password in URI_USERINFO.findall(text):
                if not _is_reference(password):
                    problems.append(f"{obj_id(obj)} {path}: URI with a literal password")
            for value in ASSIGNED_SECRET.findall(text):
                if not _is_reference(value) and not value.startswith(("mlflow.server.auth", "secretKeyRef")):
                    problems.append(f"{obj_id(obj)} {path}: literal secret-like assignment {value[:4]!r}...")
    for pod in pods(objs):
        for c in pod.containers:
            for e in c.get("env", []):
                if SENSITIVE_NAME.search(e["name"]) and "value" in e and not _is_reference(e["value"]):
                    problems.append(f"{pod} container {c['name']} env {e['name']}: literal value (use secretKeyRef)")
    _fail_if(problems, "literal credentials")


def check_network_policies(objs: list[dict]) -> None:
    """Selectors match real pods; peers without a namespaceSelector match pods here; ports are served."""
    problems: list[str] = []
    all_pods = pods(objs)
    for np in find(objs, "NetworkPolicy"):
        ns = np["metadata"].get("namespace", "default")
        local = [p for p in all_pods if p.namespace == ns]
        selected = [p for p in local if selector_matches(np["spec"]["podSelector"], p.labels)]
        if not selected:
            problems.append(f"{obj_id(np)}: podSelector matches no pod")
            continue
        served = set().union(*(container_ports(p) for p in selected))
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    if not (peer["namespaceSelector"].get("matchLabels") or peer["namespaceSelector"].get(
                            "matchExpressions")):
                        problems.append(f"{obj_id(np)}: a peer admits every namespace")
                    continue
                if "podSelector" in peer and not any(selector_matches(peer["podSelector"], p.labels) for p in local):
                    problems.append(f"{obj_id(np)}: peer {peer['podSelector']} matches no pod in {ns}")
            for port in rule.get("ports", []):
                if port.get("port") not in served:
                    problems.append(f"{obj_id(np)}: port {port.get('port')} is not a container port of its pods")
    for svc in find(objs, "Service"):
        ns = svc["metadata"].get("namespace", "default")
        backends = [p for p in all_pods if p.namespace == ns and selector_matches(
            {"matchLabels": svc["spec"].get("selector", {})}, p.labels)]
        if not backends:
            problems.append(f"{obj_id(svc)}: selector matches no pod")
            continue
        served = set().union(*(container_ports(p) for p in backends))
        for port in svc["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in served:
                problems.append(f"{obj_id(svc)}: targetPort {port.get('targetPort')} is not served by its pods")
    _fail_if(problems, "selectors that match nothing")


def admitted_pods(objs: list[dict], target_labels: dict[str, str]) -> set[str]:
    """Pods (owner[role]) in the target's namespace that some NetworkPolicy selecting the target lets in."""
    out: set[str] = set()
    all_pods = pods(objs)
    for np in find(objs, "NetworkPolicy"):
        if not selector_matches(np["spec"]["podSelector"], target_labels):
            continue
        ns = np["metadata"].get("namespace", "default")
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    out |= {str(p) for p in all_pods if p.namespace == ns and selector_matches(peer["podSelector"],
                                                                                                 p.labels)}
    return out


# ---------------------------------------------------------------------------------------------------------------
# The RayJob's contract: entrypoint, config, tracking


def entrypoint_args(rayjob: dict) -> dict[str, Any]:
    tokens = shlex.split(rayjob["spec"]["entrypoint"])
    assert tokens[:2] in (["cutmix-study", "run"], ["python", "-m"]), f"unexpected entrypoint {tokens[:3]}"
    if tokens[0] == "python":
        assert tokens[1:4] == ["-m", "pipelines.cli", "run"], f"unexpected entrypoint {tokens[:4]}"
        tokens = tokens[2:]
    args: dict[str, Any] = {"set": [], "flags": set()}
    i = 2
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("--resume", "--overwrite"):
            args["flags"].add(tok)
            i += 1
        elif tok in ("--config", "--output", "--tracking-uri", "--set"):
            assert i + 1 < len(tokens), f"{tok} without a value"
            if tok == "--set":
                args["set"].append(tokens[i + 1])
            else:
                args[tok] = tokens[i + 1]
            i += 2
        else:
            raise ManifestError(f"unknown entrypoint argument {tok!r}")
    return args


def head_pod(rayjob: dict) -> Pod:
    (pod,) = [p for p in pods([rayjob]) if p.role == "head"]
    return pod


def mount_for(pod: Pod, path: str, container_index: int = 0) -> tuple[dict, dict] | None:
    """(volumeMount, volume) under which `path` lies in the pod's main container (the deepest mount wins)."""
    container = pod.spec["containers"][container_index]
    best = None
    for m in container.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(m["mountPath"]) and (best is None or len(m["mountPath"]) > len(
                best["mountPath"])):
            best = m
    if best is None:
        return None
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    return best, volumes.get(best["name"], {})


def config_file_text(objs: list[dict], rayjob: dict, path: str) -> str:
    """The text of `path` as the head pod sees it: a key of a mounted ConfigMap."""
    pod = head_pod(rayjob)
    found = mount_for(pod, path)
    if found is None:
        raise ManifestError(f"--config {path} is not under any volumeMount of the Ray head")
    mount, volume = found
    if "configMap" not in volume:
        raise ManifestError(f"--config {path} is on volume {mount['name']!r}, which is not a ConfigMap")
    rel = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    if mount.get("subPath"):
        raise ManifestError("mount the config directory, not a subPath (subPath mounts never see updates)")
    items = volume["configMap"].get("items")
    key = rel if not items else next((i["key"] for i in items if i["path"] == rel), None)
    if key is None:
        raise ManifestError(f"--config {path}: no item of ConfigMap {volume['configMap']['name']} maps to {rel}")
    cms = [o for o in find(objs, "ConfigMap", volume["configMap"]["name"])
           if o["metadata"].get("namespace") == pod.namespace]
    if not cms:
        raise ManifestError(f"--config {path}: ConfigMap {volume['configMap']['name']!r} is not rendered")
    data = cms[0].get("data", {})
    if key not in data:
        raise ManifestError(f"--config {path}: ConfigMap {volume['configMap']['name']!r} has no key {key!r} "
                            f"(has {sorted(data)})")
    return data[key]


def parse_pipeline_config(text: str, overrides: list[str]) -> Any:
    """The config the pipeline will run: `study.config.from_dict` after the entrypoint's --set overrides."""
    import study.config as sc

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"pipeline config is not YAML: {exc}") from None
    try:
        # from_dict validates every value, model.arch against the model registry included.
        return sc.from_dict(sc.apply_overrides(data or {}, overrides))
    except sc.ConfigError as exc:
        raise ManifestError(f"pipeline config rejected by study.config: {exc}") from None


def _quantity(value: Any) -> float:
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    assert match, f"bad quantity {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1.0)


def _env_value(container: dict, name: str) -> str | None:
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


def _provides(container: dict, objs: list[dict], external: dict, name: str) -> bool:
    """Whether env var `name` reaches the container (literal, valueFrom, or a key of an envFrom source)."""
    if name in env_names(container):
        return True
    for src in container.get("envFrom", []):
        if "secretRef" in src and name in external.get(src["secretRef"]["name"], {}):
            return True
        if "configMapRef" in src:
            for cm in find(objs, "ConfigMap", src["configMapRef"]["name"]):
                if name in cm.get("data", {}):
                    return True
    return False


def check_rayjob_contract(objs: list[dict], external: dict[str, dict[str, str]]) -> Any:
    """Entrypoint, mounted config, tracking URI, storage and resources agree. Returns the pipeline config."""
    rayjob = one(objs, "RayJob")
    args = entrypoint_args(rayjob)
    problems: list[str] = []
    for flag in ("--config", "--output", "--tracking-uri"):
        if flag not in args:
            problems.append(f"entrypoint lacks {flag}")
    if "--resume" not in args["flags"]:
        problems.append("entrypoint lacks --resume (a resubmitted job must continue, not repeat)")
    _fail_if(problems, "RayJob entrypoint")

    cfg = parse_pipeline_config(config_file_text(objs, rayjob, args["--config"]), args["set"])
    head = head_pod(rayjob)
    ray = ray_pods(objs)
    workers = [p for p in ray if p.role.startswith("worker:")]

    # Tracking: the URI the driver gets and every Ray container's MLFLOW_TRACKING_URI name the MLflow Service.
    uri = args["--tracking-uri"]
    for pod in ray:
        value = _env_value(pod.spec["containers"][0], "MLFLOW_TRACKING_URI")
        if value != uri:
            problems.append(f"{pod}: MLFLOW_TRACKING_URI={value!r}, entrypoint --tracking-uri={uri!r}")
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            if not _provides(pod.spec["containers"][0], objs, external, var):
                problems.append(f"{pod}: no {var} (the server runs basic auth)")
    parts = urlsplit(uri)
    host_parts = (parts.hostname or "").split(".")
    svc_name = host_parts[0]
    svc_ns = host_parts[1] if len(host_parts) > 1 else head.namespace
    if parts.scheme != "http" or len(host_parts) not in (1, 2, 3, 5) or host_parts[2:] not in (
            [], ["svc"], ["svc", "cluster", "local"]):
        problems.append(f"tracking URI {uri!r} is not http://<service>[.<namespace>[.svc[.cluster.local]]]:<port>")
    services = [s for s in find(objs, "Service", svc_name) if s["metadata"].get("namespace") == svc_ns]
    if not services:
        problems.append(f"tracking URI {uri!r}: no Service {svc_name!r} in namespace {svc_ns!r}")
    else:
        svc = services[0]
        if parts.port not in [p["port"] for p in svc["spec"]["ports"]]:
            problems.append(f"tracking URI {uri!r}: Service {svc_name} does not expose port {parts.port}")
        mlflow = [o for o in objs if o["kind"] == "Deployment" and o["metadata"].get("namespace") == svc_ns
                  and selector_matches({"matchLabels": svc["spec"]["selector"]},
                                       o["spec"]["template"]["metadata"].get("labels", {}))]
        if not mlflow:
            problems.append(f"Service {svc_name} selects no Deployment")
        for dep in mlflow:
            script = " ".join(dep["spec"]["template"]["spec"]["containers"][0].get("command", []) +
                              dep["spec"]["template"]["spec"]["containers"][0].get("args", []))
            if "mlflow server" not in script or "--app-name basic-auth" not in script:
                problems.append(f"{obj_id(dep)} does not run `mlflow server --app-name basic-auth`")
            allowed = re.search(r"--allowed-hosts[= ]\"?([^\"\s]+)", script)
            if not allowed:
                problems.append(f"{obj_id(dep)}: no --allowed-hosts (the server answers 403 behind a Service)")
            elif not any(fnmatch.fnmatch(parts.netloc, pattern) for pattern in allowed.group(1).split(",")):
                problems.append(f"{obj_id(dep)}: --allowed-hosts does not admit {parts.netloc!r}")
            # Only the Ray pods (and the ingress controller, checked in test_network_policies) reach MLflow.
            admitted = admitted_pods(objs, dep["spec"]["template"]["metadata"]["labels"])
            if admitted != {str(p) for p in ray}:
                problems.append(f"pods admitted to MLflow {sorted(admitted)} != Ray pods {sorted(map(str, ray))}")

    # Resources: a trial fits one worker, and GPUs are asked for exactly when trials want them.
    trial = cfg.search.resources_per_trial
    for pod in workers:
        limits = pod.spec["containers"][0].get("resources", {}).get("limits", {})
        gpus = _quantity(limits.get("nvidia.com/gpu", 0))
        cpus = _quantity(limits.get("cpu", 0))
        if trial.gpu > 0 and gpus < trial.gpu:
            problems.append(f"{pod}: {gpus:g} GPUs cannot hold a trial of {trial.gpu:g} GPU")
        if trial.gpu == 0 and gpus > 0:
            problems.append(f"{pod}: requests GPUs but trials use none (search.resources_per_trial.gpu=0)")
        if cpus < trial.cpu:
            problems.append(f"{pod}: {cpus:g} CPUs cannot hold a trial of {trial.cpu:g} CPU")
        tolerates_gpu = any(t.get("key") == "nvidia.com/gpu" for t in pod.spec.get("tolerations", []))
        if tolerates_gpu != (gpus > 0):
            problems.append(f"{pod}: GPU toleration without GPUs, or GPUs without the toleration")
    if not workers:
        problems.append("the RayJob has no worker group")

    # Storage: the study state must outlive the cluster, where every Ray node can reach it.
    storage = cfg.search.storage
    if storage.startswith("s3://"):
        for pod in ray:
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
                if not _provides(pod.spec["containers"][0], objs, external, var):
                    problems.append(f"{pod}: search.storage={storage} but {var} is not provided")
    elif storage:
        claims = set()
        for pod in ray:
            found = mount_for(pod, storage)
            if not found or "persistentVolumeClaim" not in found[1] or found[0].get("readOnly"):
                problems.append(f"{pod}: search.storage={storage} is not on a writable PVC mount")
            else:
                claims.add(found[1]["persistentVolumeClaim"]["claimName"])
        if len(claims) > 1:
            problems.append(f"search.storage is on different PVCs per pod: {sorted(claims)}")
    else:
        problems.append("search.storage is empty: the study would live in the head's output dir and die with it")

    # Paths the driver and the trials use exist in the pods. --output must outlive the cluster (a retried RayJob
    # resumes from it: study_run.json, finished retrain seeds, the output lock) and be the same volume on every Ray
    # pod (the driver on the head reads what the workers' tasks write there): one PVC, writable everywhere.
    found = mount_for(head, args["--output"])
    if not found or found[0].get("readOnly"):
        problems.append(f"--output {args['--output']} is not on a writable mount of the head")
    claims = set()
    for pod in ray:
        found = mount_for(pod, args["--output"])
        if not found or "persistentVolumeClaim" not in found[1] or found[0].get("readOnly"):
            problems.append(f"{pod}: --output {args['--output']} is not on a writable PVC mount (an emptyDir dies "
                            "with the pod, and a retried job would repeat the study's work)")
        else:
            claims.add(found[1]["persistentVolumeClaim"]["claimName"])
    if len(claims) > 1:
        problems.append(f"--output is on different PVCs per pod: {sorted(claims)}")
    if cfg.data.root:
        for pod in ray:
            if not mount_for(pod, cfg.data.root):
                problems.append(f"{pod}: data.root={cfg.data.root} is not mounted")
    for pod in ray:
        if not mount_for(pod, args["--config"]):
            problems.append(f"{pod}: --config {args['--config']} is not mounted")
    # One image for the whole cluster (the submitter and the autoscaler included).
    images = {c["image"] for p in pods([rayjob]) for c in p.spec["containers"]}
    autoscaler_image = (ray_cluster_spec(rayjob).get("autoscalerOptions") or {}).get("image")
    if len(images) != 1 or (autoscaler_image and autoscaler_image not in images):
        problems.append(f"Ray pods use several images: {sorted(images)} (autoscaler: {autoscaler_image})")
    _fail_if(problems, "the RayJob does not fit the rest of the deployment")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile


def constraint_pins(text: str | None = None) -> dict[str, str]:
    text = (REPO / "constraints.txt").read_text() if text is None else text
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s#;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def check_dockerfile(dockerfile: str, constraints: str) -> None:
    problems: list[str] = []
    pins = constraint_pins(constraints)
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args = {m.group(1): m.group(2) for ln in lines if (m := re.match(r"ARG\s+(\w+)=(\S+)", ln))}
    for pkg, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        mentioned = set(re.findall(rf"(?<![\w-]){pkg}==([\w.+-]+)", text)) | ({args[arg]} if arg in args else set())
        mentioned = {args.get(v.strip("${}"), v) if v.startswith("$") else v for v in mentioned}
        if mentioned != {pins.get(pkg)}:
            problems.append(f"{pkg}: Dockerfile pins {sorted(mentioned)}, constraints.txt {pins.get(pkg)}")
    if not re.search(r"pip install\s+(?:\S+\s+)*-c\s+\S*constraints\.txt(?:\s+\S+)*\s+\.(?:\s|$)", text):
        problems.append("the project is not installed with `pip install -c constraints.txt .`")
    stages = [ln for ln in lines if ln.upper().startswith("FROM ")]
    if not stages:
        problems.append("no FROM")
    base = args.get("PYTHON_IMAGE", stages[0].split()[1] if stages else "")
    if not re.search(r"python:3\.11\b", base):
        problems.append(f"base image {base!r} is not Python 3.11")
    # The final stage (the default build target) must end as a non-root user.
    last = max((i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")), default=0)
    users = [ln.split()[1] for ln in lines[last:] if ln.upper().startswith("USER ")]
    if not users:
        problems.append("the final stage sets no USER (runs as root)")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit():
            problems.append(f"USER {user}: use a numeric uid so the kubelet can verify runAsNonRoot")
        elif int(user) == 0:
            problems.append("USER 0 is root")
    if not any(ln.upper().startswith("WORKDIR ") for ln in lines[last:]):
        problems.append("the final stage sets no WORKDIR")
    for ln in lines:
        m = re.match(r"(ENV|ARG)\s+(.*)", ln)
        if m:
            for name in re.findall(r"(\w+)=", m.group(2)) or [m.group(2).split()[0]]:
                if SENSITIVE_NAME.search(name):
                    problems.append(f"{m.group(1)} {name}: secrets must not be baked into the image")
        if re.match(r"(COPY|ADD)\s", ln) and re.search(r"\.env\b|secret|\.ssh|credentials", ln, re.I):
            problems.append(f"copies credentials into the image: {ln}")
    _fail_if(problems, "Dockerfile")
