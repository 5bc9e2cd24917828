"""infra/ agrees with the code: settings it sets exist and are accepted,
probes ask for real services, Kubernetes waits long enough for the server's
graceful stop, the servers reach AWS through an IRSA service account with the
queue and broker settings of a ConfigMap, spread across nodes under an
autoscaler, a Job migrates the schema, and the image's build context holds
only what the Dockerfile copies."""

from __future__ import annotations

import fnmatch
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


def _manifest(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((INFRA / "k8s" / name).read_text())
    return loaded


def test_queue_and_broker_settings_come_from_a_configmap_the_server_accepts() -> None:
    from datamcp.config.settings import load_settings

    config = _manifest("configmap.yaml")
    data = config["data"]
    assert set(data) <= SETTINGS, set(data) - SETTINGS
    assert {"DATAMCP_AGENTS_TASK_QUEUE_URL", "DATAMCP_EVENTS_BROKERS"} <= set(data)
    settings = load_settings(environ={**data, "DATAMCP_DATABASE_URL": "postgresql://u@db/x"})
    (broker,) = settings.events.brokers
    assert broker["kind"] == "eventbridge" and settings.database_migrate == "verify"
    assert settings.agents.task_queue_max_timeout == 45.0  # the tasks function's (infra/sam)
    container = _container()
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert not set(data) & {e["name"] for e in container["env"]}  # one place for each


def test_pods_use_the_irsa_service_account_and_spread_across_nodes() -> None:
    account = _manifest("serviceaccount.yaml")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role)
    pod = _container()["pod"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    labels = _manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "topology.kubernetes.io/zone" in spread
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_autoscaler_owns_the_replicas() -> None:
    hpa = _manifest("hpa.yaml")["spec"]
    deployment = _manifest("deployment.yaml")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": deployment["kind"],
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # an apply would fight the autoscaler
    assert hpa["minReplicas"] > _manifest("pdb.yaml")["spec"]["minAvailable"]
    assert _container()["resources"]["requests"]["cpu"]  # CPU utilisation needs a request


def test_the_migration_job_runs_db_upgrade_with_the_servers_image() -> None:
    from datamcp.entrypoints.cli import add_server_commands
    from datamcp_client.cli import build_parser

    job = _manifest("migrate-job.yaml")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["image"] == _container()["image"]
    assert container["command"] == ["datamcp"]
    parsed = build_parser(add_server_commands).parse_args(container["args"])
    assert parsed.func.__name__ == "_db_upgrade"
    assert {e["name"] for e in container["env"]} <= SETTINGS
    assert job["restartPolicy"] == "OnFailure"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path, or one
    of its parent directories, decides; ``!`` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").replace("**/", "*")
        if any(fnmatch.fnmatch(p, glob) for p in prefixes):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    lines = (INFRA.parent / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = re.findall(r"^COPY (?!--from)(.+?) \S+$", (INFRA / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert not _ignored(source, patterns), source
    for kept in ("src/datamcp/bootstrap.py", "gen/datamcp/v1/agents_pb2.py", "handlers/tasks.py"):
        assert not _ignored(kept, patterns), kept
    for left_out in (
        ".venv/bin/python",
        ".build/lambda/x.py",
        ".cache/lambda-rie/bin",
        ".git/HEAD",
    ):
        assert _ignored(left_out, patterns), left_out
    assert _ignored("src/datamcp/__pycache__/bootstrap.cpython-311.pyc", patterns)
