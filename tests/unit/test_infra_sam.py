"""infra/sam/template.yaml agrees with the code and the issue: real handlers,
real settings, partial batch failures, a DLQ with redrive, a visibility
timeout of at least 6x the function timeout, and no wildcard permissions."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from datamcp.config.fields import FIELDS

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "sam" / "template.yaml"


class _Loader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (!Ref, !GetAtt...) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_Loader.add_multi_constructor("!", _intrinsic)


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_Loader)
    return loaded


def functions(t: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: r["Properties"]
        for name, r in t["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    }


def test_every_function_names_a_real_handler_and_real_settings() -> None:
    t = template()
    handlers = {p["Handler"] for p in functions(t).values()}
    assert handlers == {
        "handlers.tasks.handler",
        "handlers.events.handler",
        "handlers.schedule.handler",
    }
    for name in handlers:
        module, attr = name.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attr))
    env = t["Globals"]["Function"]["Environment"]["Variables"]
    assert set(env) <= {f.env for f in FIELDS}, set(env) - {f.env for f in FIELDS}
    assert "DATAMCP_DATABASE_URL" in env


def test_the_task_queue_redrives_to_a_dlq_and_outlasts_six_invocations() -> None:
    t = template()
    tasks = functions(t)["TasksFunction"]
    queue = t["Resources"]["TaskQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * tasks["Timeout"]
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"GetAtt": "TaskDeadLetterQueue.Arn"}
    assert 1 < redrive["maxReceiveCount"] <= 10
    (source,) = tasks["Events"].values()
    assert source["Type"] == "SQS"
    assert source["Properties"]["Queue"] == {"GetAtt": "TaskQueue.Arn"}
    assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_events_and_schedules_reach_their_functions_with_retries_and_a_dlq() -> None:
    fns = functions(template())
    (rule,) = fns["EventsFunction"]["Events"].values()
    assert rule["Type"] == "EventBridgeRule"
    assert rule["Properties"]["Pattern"] == {"source": ["datamcp"]}  # the broker's Source
    (tick,) = fns["ScheduleFunction"]["Events"].values()
    assert tick["Type"] == "Schedule" and "Input" not in tick["Properties"]  # keeps its time
    for event in (rule, tick):
        assert event["Properties"]["DeadLetterConfig"]["Type"] == "SQS"


def test_permissions_name_actions_and_resources_exactly() -> None:
    t = template()
    for name, resource in t["Resources"].items():
        props = resource["Properties"]
        documents = [props.get("PolicyDocument")] + [
            p for p in props.get("Policies", []) if isinstance(p, dict)
        ]
        for doc in filter(None, documents):
            for statement in doc["Statement"]:
                actions = statement["Action"]
                for action in [actions] if isinstance(actions, str) else actions:
                    assert "*" not in action, (name, action)
                assert statement.get("Resource") != "*", name
