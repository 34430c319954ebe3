"""Writes prometheusrule.yaml: deploy/prometheus/alerts.yml's rule groups as a Prometheus Operator PrometheusRule.

    python3 deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml

alerts.yml stays the one place alerts are written (and unit-tested with promtool);
tests/unit/test_deploy_kubernetes.py fails while the two differ.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ALERTS = Path(__file__).resolve().parents[1] / "prometheus" / "alerts.yml"

HEADER = """\
# Generated from deploy/prometheus/alerts.yml by deploy/kubernetes/prometheusrule.py; do not edit:
#   python3 deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml
# Add the labels your Prometheus's ruleSelector matches (kube-prometheus-stack: release: <its release>).
"""


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (PromQL), so the rules read as they do in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(alerts: Path = ALERTS) -> dict[str, Any]:
    groups = yaml.safe_load(alerts.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "lifelong", "labels": {"app.kubernetes.io/name": "lifelong"}},
        "spec": {"groups": groups},
    }


def render(alerts: Path = ALERTS) -> str:
    return HEADER + yaml.dump(prometheus_rule(alerts), Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render())
