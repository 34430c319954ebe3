"""deploy/kubernetes/: the core resources pass kubernetes-validate --strict (and broken copies do not); the
Prometheus Operator resources, which it has no schema for, pass the vendored CRDs' schemas; the
PrometheusRule holds exactly deploy/prometheus/alerts.yml's groups; the manifests fit each other and the daemon.
"""
from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_tools import (DATA, DEPLOY, IMAGE_UID, load_all, run, settings_from_env, shutdown_budget_s)

from lifelong.cli import parser

KUBE = DEPLOY / "kubernetes"
CORE_FILES = ("configmap.yaml", "topics-job.yaml", "learner.yaml", "predictor.yaml")
# Kubernetes releases whose schemas (shipped with kubernetes-validate) the manifests must pass.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# The Prometheus Operator's CRDs, vendored unchanged from github.com/prometheus-operator/prometheus-operator,
# example/prometheus-operator-crd/ at tag v0.93.0 (f8fafd475f3d132e239432ae6172de60a6cb6516):
# Apache License 2.0, Copyright The Prometheus Operator Authors.
CRDS = DATA / "crds"
CUSTOM = {"ServiceMonitor": ("servicemonitor.yaml", "monitoring.coreos.com_servicemonitors.yaml"),
          "PrometheusRule": ("prometheusrule.yaml", "monitoring.coreos.com_prometheusrules.yaml")}


def kubernetes_validate(*paths: Path) -> tuple[int, str]:
    versions = [arg for v in KUBERNETES_VERSIONS for arg in ("-k", v)]
    result = run(sys.executable, "-m", "kubernetes_validate", "--strict", *versions, *map(str, paths))
    return result.returncode, result.stdout + result.stderr


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, over every file the kustomization lists."""
    out = {}
    for name in yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]:
        for doc in load_all(KUBE / name):
            out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)


def test_core_resources_pass_kubernetes_validate() -> None:
    status, output = kubernetes_validate(*(KUBE / name for name in CORE_FILES))
    assert status == 0, output
    kinds = {(kind.lower(), name) for kind, name in resources() if kind not in CUSTOM}
    for kind, name in kinds:
        for version in KUBERNETES_VERSIONS:
            assert f"passed for resource {kind}/{name} against version {version}" in output, (kind, name, output)
    assert "WARN" not in output and "ERROR" not in output, output


def test_kubernetes_validate_has_no_schema_for_the_custom_resources() -> None:
    """Which is why they are checked against their CRDs below: it warns and exits 0."""
    status, output = kubernetes_validate(*(KUBE / file for file, _ in CUSTOM.values()))
    assert status == 0
    for kind in CUSTOM:
        assert f"Couldn't find schema for kind {kind}" in output, output


@pytest.mark.parametrize("change, expected", [
    (("terminationGracePeriodSeconds: 90", "terminationGracePeriodSecond: 90"),
     "'terminationGracePeriodSecond' was unexpected"),
    (("replicas: 1", "replicas: one"), "'one' is not of type 'integer'"),
    (("fieldPath: metadata.name", "fieldpath: metadata.name"), "'fieldPath' is a required property"),
])
def test_kubernetes_validate_rejects_a_broken_learner(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    text = (KUBE / "learner.yaml").read_text()
    assert change[0] in text
    path = tmp_path / "learner.yaml"
    path.write_text(text.replace(*change))
    status, output = kubernetes_validate(path)
    assert status == 1 and "ERROR" in output and expected in output, output


def crd_schema(crd_file: str) -> dict[str, Any]:
    """The CRD's v1 openAPIV3Schema, with unknown fields rejected where the API server would reject them
    (kubectl's default strict field validation): objects that list properties and neither allow
    additionalProperties nor carry x-kubernetes-preserve-unknown-fields."""
    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: strict(value) for key, value in node.items()}
            if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            return node
        return [strict(item) for item in node] if isinstance(node, list) else node
    crd = yaml.safe_load((CRDS / crd_file).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert served["served"] and not any("x-kubernetes-validations" in str(v) for v in crd["spec"]["versions"])
    return strict(served["schema"]["openAPIV3Schema"])


def crd_errors(kind: str, doc: dict[str, Any]) -> list[str]:
    _, crd_file = CUSTOM[kind]
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    validator = jsonschema.Draft7Validator(crd_schema(crd_file))
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", sorted(CUSTOM))
def test_custom_resources_match_their_crds(kind: str) -> None:
    (doc,) = load_all(KUBE / CUSTOM[kind][0])
    assert not crd_errors(kind, doc)


def test_crd_schemas_reject_broken_custom_resources() -> None:
    monitor = copy.deepcopy(load_all(KUBE / "servicemonitor.yaml")[0])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("'intervall' was unexpected" in e for e in crd_errors("ServiceMonitor", monitor))
    rule = copy.deepcopy(load_all(KUBE / "prometheusrule.yaml")[0])
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert any("5 is not of type 'string'" in e for e in crd_errors("PrometheusRule", rule))
    del rule["spec"]["groups"][0]["name"]
    assert any("'name' is a required property" in e for e in crd_errors("PrometheusRule", rule))


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("prometheusrule_generator", KUBE / "prometheusrule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_rule_holds_the_alerts_of_alerts_yml() -> None:
    """alerts.yml is where alerts are written (and promtool-tested); the PrometheusRule must not drift."""
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    (rule,) = load_all(KUBE / "prometheusrule.yaml")
    fix = "run `python3 deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml`"
    assert rule["spec"]["groups"] == alerts, fix
    assert (KUBE / "prometheusrule.yaml").read_text() == generator().render(), fix


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_learner_statefulset() -> None:
    docs = resources()
    learner = docs["StatefulSet", "lifelong-learner"]
    service = docs["Service", learner["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    labels = learner["spec"]["template"]["metadata"]["labels"]
    assert learner["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert selects(service["spec"]["selector"], labels)
    assert learner["spec"]["replicas"] == 1, "learners of one model key fence each other"
    spec = pod_spec(learner)
    assert spec["terminationGracePeriodSeconds"] >= max(60, shutdown_budget_s())
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LIFELONG_SOURCE__KAFKA__INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (claim,) = learner["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["LIFELONG_CHECKPOINT__DIR"]["value"] == "/var/lib/lifelong"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spec["securityContext"]["fsGroup"] == IMAGE_UID, "the volume writable by the image's user"


def test_predictors_service_and_disruption_budget() -> None:
    docs = resources()
    predictor = docs["Deployment", "lifelong-predictor"]
    assert predictor["spec"]["replicas"] == 2
    labels = predictor["spec"]["template"]["metadata"]["labels"]
    service = docs["Service", "lifelong-predictor"]
    assert service["spec"]["type"] == "ClusterIP" and selects(service["spec"]["selector"], labels)
    learner_labels = docs["StatefulSet", "lifelong-learner"]["spec"]["template"]["metadata"]["labels"]
    assert not selects(service["spec"]["selector"], learner_labels), "predictions go to predictors only"
    budget = docs["PodDisruptionBudget", "lifelong-predictor"]
    assert selects(budget["spec"]["selector"]["matchLabels"], labels)
    assert 0 < budget["spec"]["minAvailable"] < predictor["spec"]["replicas"]
    assert predictor["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "volumeClaimTemplates" not in predictor["spec"]


@pytest.mark.parametrize("workload, role", [(("StatefulSet", "lifelong-learner"), "learner"),
                                            (("Deployment", "lifelong-predictor"), "predictor")])
def test_pods_run_the_daemon_with_probes_resources_and_settings(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workload: tuple[str, str], role: str) -> None:
    docs = resources()
    spec = pod_spec(docs[workload])
    (container,) = spec["containers"]
    args = parser().parse_args(["run", *container["args"]])  # exits on an argument `lifelong run` refuses
    assert args.role == role and "command" not in container, "the image's ENTRYPOINT: lifelong run"
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    security = {**spec["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] and security["runAsUser"] == IMAGE_UID and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/var/lib/lifelong", "/etc/lifelong"}

    config_map = docs["ConfigMap", "lifelong-config"]
    (config_volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    config = tmp_path / "lifelong.yaml"
    config.write_text(config_map["data"]["lifelong.yaml"])
    env = {e["name"]: e.get("value", "1") for e in container.get("env", [])}  # downward-API values stand in as "1"
    settings = settings_from_env(monkeypatch, env, config, role=args.role)
    assert settings.source.kind == "kafka" and settings.http.host == "0.0.0.0" and settings.http.port == 8000
    assert str(settings.checkpoint.dir) == "/var/lib/lifelong"
    assert settings.snapshots.max_staleness_s >= 120, "longer than a learner restart (see configmap.yaml)"


def test_topics_job_creates_the_topics() -> None:
    job = resources()["Job", "lifelong-topics"]
    (container,) = pod_spec(job)["containers"]
    command = container["command"]
    assert command[0] == "lifelong"
    args = parser().parse_args(command[1:])
    assert args.topics_command == "create" and args.partitions >= 1
    assert pod_spec(job)["restartPolicy"] == "OnFailure"


def test_service_monitor_scrapes_both_services_as_job_lifelong() -> None:
    docs = resources()
    monitor = docs["ServiceMonitor", "lifelong"]["spec"]
    services = [doc for (kind, _), doc in docs.items() if kind == "Service"]
    scraped = [s for s in services if selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in scraped} == {"lifelong-learner", "lifelong-predictor"}
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        # The job label is this Service label's value: the dashboard and the alerts select job="lifelong".
        assert service["metadata"]["labels"][monitor["jobLabel"]] == "lifelong"
