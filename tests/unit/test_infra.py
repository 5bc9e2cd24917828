"""infra/ agrees with the code: settings it sets exist, probes ask for real
services, and Kubernetes waits long enough for the server's graceful stop."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from datamcp.config.fields import FIELDS
from datamcp.v1 import health_pb2

INFRA = Path(__file__).resolve().parents[2] / "infra"
SETTINGS = {f.env for f in FIELDS}


def _container() -> dict[str, Any]:
    deployment = yaml.safe_load((INFRA / "k8s" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {"pod": deployment["spec"]["template"]["spec"], **container}


def test_deployment_sets_only_real_settings_and_waits_for_the_graceful_stop() -> None:
    container = _container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    grace = float(env["DATAMCP_SERVER_SHUTDOWN_GRACE"])
    drain = float(env["DATAMCP_SERVER_DRAIN_DELAY"])
    assert container["pod"]["terminationGracePeriodSeconds"] >= grace + drain + 2
    port = int(env["DATAMCP_LISTEN"].rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == port


def test_probes_use_grpc_health_for_real_services() -> None:
    container = _container()
    service = health_pb2.DESCRIPTOR.services_by_name["HealthService"].full_name
    readiness = container["readinessProbe"]["grpc"]
    liveness = container["livenessProbe"]["grpc"]
    assert readiness.get("service", "") == ""  # the whole server: dependencies included
    assert liveness["service"] == service  # needs no dependency: outages do not restart pods
    assert container["startupProbe"]["grpc"]["service"] == service


def test_dockerfile_sets_only_real_settings() -> None:
    text = (INFRA / "Dockerfile").read_text()
    names = set(re.findall(r"\b(DATAMCP_[A-Z_]+)=", text))
    assert names and names <= SETTINGS, names - SETTINGS
