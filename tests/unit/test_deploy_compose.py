"""deploy/compose.yaml: valid against the Compose Specification's JSON schema, its references resolve, its
lifelong services carry settings lifelong accepts, and its Prometheus and Grafana configs fit the services.

No container engine runs on the development machine: the file is validated, never started.
"""
from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_tools import DATA, DEPLOY, REPO, duration_s, run, settings_from_env, shutdown_budget_s, tool

from lifelong.cli import parser

COMPOSE = DEPLOY / "compose.yaml"
# The Compose Specification's schema, vendored unchanged from github.com/compose-spec/compose-spec,
# schema/compose-spec.json at commit a08f8d51631b7127ddac3d2c65537db429d0f1d0 (2025-10-28; the file's
# latest change there): Apache License 2.0, Copyright The Compose Specification Authors.
SCHEMA = DATA / "compose-spec.json"
LIFELONG_SERVICES = ("topics", "learner", "predictor")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_compose_file_matches_the_compose_specification() -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator().iter_errors(compose())]
    assert not errors, errors


@pytest.mark.parametrize("path, value, expected", [
    (("services", "learner", "stop_grace_priod"), "60s", "'stop_grace_priod' does not match"),
    # (a string passes: it may be a ${VARIABLE}; compose checks the interpolated value)
    (("services", "predictor", "deploy", "replicas"), [2], "is not of type 'integer', 'string'"),
    (("services", "learner", "depends_on", "topics", "condition"), "service_done",
     "is not valid under any of the given schemas"),
    (("volumes", "learner-state", "driver_opts"), ["type=tmpfs"], "is not of type 'object'"),
])
def test_schema_rejects_a_broken_variant(path: tuple[str, ...], value: Any, expected: str) -> None:
    broken = copy.deepcopy(compose())
    node = broken
    for key in path[:-1]:
        if node.get(key) is None:  # `learner-state:` is an empty mapping
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    messages = [e.message for e in validator().iter_errors(broken)]
    assert any(expected in m for m in messages), messages


def container_port(mapping: str) -> str:
    return mapping.rsplit(":", 1)[1]


def test_references_resolve() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"kafka", "topics", "learner", "predictor", "prometheus", "grafana"}
    declared = set(doc["volumes"])
    used: set[str] = set()
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                used.add(source)
        image = service["image"]
        assert re.fullmatch(r"[a-z0-9./_-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a version, not {image!r}"
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == REPO and (context / service["build"]["dockerfile"]).is_file()
    assert used == declared, "every named volume declared and used"
    pom = (DEPLOY / "kafka" / "pom.xml").read_text()
    kafka_version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version}", "the version the tests run against"


def test_kafka_is_a_single_kraft_node_the_services_reach() -> None:
    kafka = compose()["services"]["kafka"]
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols) and set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "kafka:9092"
    host = advertised["HOST"]
    assert any(container_port(p) == host.rsplit(":", 1)[1] for p in kafka["ports"])
    # One broker: every internal topic (the transaction log the snapshot publisher needs) with one replica.
    for name in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
        assert env[f"KAFKA_{name}_REPLICATION_FACTOR"] == 1
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "a base64url UUID"
    assert kafka["volumes"] == [f"kafka-data:{env['KAFKA_LOG_DIRS']}"]
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_lifelong_services_run_valid_commands_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    roles = {}
    for name in LIFELONG_SERVICES:
        service = services[name]
        entrypoint = service.get("entrypoint", ["lifelong", "run"])  # the image's ENTRYPOINT
        assert entrypoint[0] == "lifelong"
        args = parser().parse_args([*entrypoint[1:], *service.get("command", [])])  # exits on a bad argument
        with monkeypatch.context() as patch:
            settings = settings_from_env(patch, service["environment"], role=getattr(args, "role", None))
        roles[name] = settings.role
        assert settings.source.kind == "kafka"
        assert settings.source.kafka.bootstrap_servers == "kafka:9092"
        assert settings.source.kafka.labels_topic, "predictors send /v1/feedback labels to Kafka"
    assert roles == {"topics": "all", "learner": "learner", "predictor": "predictor"}
    assert parser().parse_args(services["topics"]["entrypoint"][1:]).topics_command == "create"
    assert services["topics"]["restart"] == "no"
    for name in ("learner", "predictor"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"

    learner, predictor = services["learner"], services["predictor"]
    assert learner["volumes"] == ["learner-state:/var/lib/lifelong"]  # the image's VOLUME and checkpoint.dir
    assert learner["environment"]["LIFELONG_SOURCE__KAFKA__INSTANCE_ID"]
    assert duration_s(learner["stop_grace_period"]) >= shutdown_budget_s()
    assert predictor["deploy"]["replicas"] == 2 and "container_name" not in predictor
    low, high = map(int, re.search(r":(\d+)-(\d+):", predictor["ports"][0]).groups())
    assert high - low + 1 == predictor["deploy"]["replicas"], "one host port per replica"
    assert all(container_port(p) == "8000" for name in ("learner", "predictor") for p in services[name]["ports"])


def test_prometheus_config_passes_promtool_and_targets_the_services(tmp_path: Path) -> None:
    services = compose()["services"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    config_path = DEPLOY / next(src for src, dst in mounts.items() if dst == "/etc/prometheus/prometheus.yml")
    # Beside alerts.yml, as in the container: rule_files resolve relative to the config file.
    assert config_path.parent == DEPLOY / "prometheus"
    checked = run(tool("promtool"), "check", "config", str(config_path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "lifelong"  # the dashboard and LifelongServingDown select it
    (static,) = job["static_configs"]
    assert static["targets"] == ["learner:8000"]
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["predictor"] and dns["port"] == 8000 and dns["type"] == "A"


def test_prometheus_config_differs_from_the_host_one_only_in_targets() -> None:
    compose_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-compose.yml").read_text())
    host_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert compose_config["global"] == host_config["global"]
    assert compose_config["rule_files"] == host_config["rule_files"]
    keep = ("job_name", "metrics_path")
    assert [{k: j[k] for k in keep} for j in compose_config["scrape_configs"]] == \
        [{k: j[k] for k in keep} for j in host_config["scrape_configs"]]


def test_grafana_gets_the_dashboard_and_a_datasource_at_the_prometheus_service() -> None:
    services = compose()["services"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "lifelong.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/lifelong.json"] == f"{dashboards_dir}/lifelong.json"
    assert mounts["./grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    source = next(src for src, dst in mounts.items() if dst.startswith("/etc/grafana/provisioning/datasources/"))
    compose_source = yaml.safe_load((DEPLOY / source).read_text())
    host_source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (theirs,), (ours,) = host_source["datasources"], compose_source["datasources"]
    assert {**ours, "url": theirs["url"]} == theirs, "the same data source (uid the dashboard expects) but its url"
    assert ours["url"] == "http://prometheus:9090"
    assert any(container_port(p) == "9090" for p in services["prometheus"]["ports"])
