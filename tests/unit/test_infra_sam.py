"""infra/sam/template.yaml agrees with the code and holds what a deployment
needs, checked on the source and on AWS's own SAM transform of it (what
CloudFormation deploys): real handlers and settings, partial batch failures,
a dead-letter queue for every event source and asynchronous invocation,
bounded retries, retained queues, alarms, log retention, least privilege,
the database URL from a secret, and migrations once per release."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamcp.config.fields import FIELDS
from datamcp.entrypoints import lambda_local
from handlers._runtime import MARGIN_MAX, MARGIN_MIN, MARGIN_SHARE

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "sam" / "template.yaml"
ASYNC = ("EventsFunction", "ScheduleFunction", "MigrateFunction")
#: Actions with no resource ARN to scope to (VPC network interfaces, X-Ray).
UNSCOPED = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}


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


@pytest.fixture(scope="module")
def deployed() -> dict[str, Any]:
    """What CloudFormation gets: the SAM transform's output (``make sam-check``)."""
    sys.path.insert(0, str(ROOT / "infra" / "sam"))
    try:
        check = importlib.import_module("check")
    finally:
        sys.path.pop(0)
    out: dict[str, Any] = check.transform()
    return out


def functions(t: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: r["Properties"]
        for name, r in t["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    }


def of_type(t: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in t["Resources"].items() if r["Type"] == kind}


def env(t: dict[str, Any], function: str) -> dict[str, Any]:
    merged = dict(t["Globals"]["Function"]["Environment"]["Variables"])
    merged.update(functions(t)[function].get("Environment", {}).get("Variables", {}))
    return merged


def test_every_function_names_a_real_handler_and_real_settings() -> None:
    t = template()
    handlers = {p["Handler"] for p in functions(t).values()}
    assert handlers == {
        "handlers.tasks.handler",
        "handlers.events.handler",
        "handlers.schedule.handler",
        "handlers.migrate.handler",
    }
    for name in handlers:
        module, attr = name.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attr))
    settings = {f.env for f in FIELDS}
    for function in functions(t):
        variables = env(t, function)
        ours = {k for k in variables if k.startswith("DATAMCP_")}
        assert ours <= settings, ours - settings
        assert set(variables) - ours <= {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}
        # The URL (a password inside) is never a plain variable: a secret holds it.
        assert "DATAMCP_DATABASE_URL" not in variables
        assert "DATAMCP_DATABASE_URL_SECRET" in variables
        migrates = variables["DATAMCP_DATABASE_MIGRATE"] == "verify"
        assert migrates or function == "MigrateFunction"
    assert not any("Url" in p and "Secret" not in p for p in t["Parameters"])


def test_lambda_local_runs_the_handlers_the_template_names() -> None:
    """``datamcp lambda-local`` finds handlers by name (datamcp never imports
    the handlers package): the names are the template's and they load."""
    handlers = {p["Handler"] for p in functions(template()).values()}
    assert set(lambda_local.HANDLERS.values()) <= handlers
    for name in lambda_local.HANDLERS.values():
        assert callable(lambda_local.load(name))
    context = lambda_local.load(f"{lambda_local.RUNTIME}.LocalContext")(5.0)
    assert 0 < context.get_remaining_time_in_millis() <= 5000
    assert callable(lambda_local.load(f"{lambda_local.RUNTIME}.shutdown"))


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


def test_queued_tasks_fit_the_tasks_function() -> None:
    t = template()
    timeout = functions(t)["TasksFunction"]["Timeout"]
    limit = float(env(t, "TasksFunction")["DATAMCP_AGENTS_TASK_QUEUE_MAX_TIMEOUT"])
    margin = min(MARGIN_MAX, max(MARGIN_MIN, timeout * MARGIN_SHARE))
    assert limit + margin + 5 <= timeout  # and a few seconds of cold start
    assert float(t["Outputs"]["TaskQueueMaxTimeout"]["Value"]) == limit


def test_every_event_source_and_async_invocation_ends_in_a_dead_letter_queue() -> None:
    t = template()
    fns = functions(t)
    (rule,) = fns["EventsFunction"]["Events"].values()
    assert rule["Type"] == "EventBridgeRule"
    assert rule["Properties"]["Pattern"] == {"source": ["datamcp"]}  # the broker's Source
    (tick,) = fns["ScheduleFunction"]["Events"].values()
    assert tick["Type"] == "Schedule" and "Input" not in tick["Properties"]  # keeps its time
    own = {
        "TasksFunction": "TaskDeadLetterQueue",
        "EventsFunction": "EventsDeadLetterQueue",
        "ScheduleFunction": "ScheduleDeadLetterQueue",
        "MigrateFunction": "MigrateDeadLetterQueue",
    }
    for event, function in ((rule, "EventsFunction"), (tick, "ScheduleFunction")):
        # Only Arn: Type and Arn together is what the transform rejected.
        assert event["Properties"]["DeadLetterConfig"] == {
            "Arn": {"GetAtt": f"{own[function]}.Arn"}
        }
    for function in ASYNC:
        config = fns[function]["EventInvokeConfig"]
        assert 0 <= config["MaximumRetryAttempts"] <= 2
        assert 60 <= config["MaximumEventAgeInSeconds"] <= 3600
        on_failure = config["DestinationConfig"]["OnFailure"]
        assert on_failure == {"Type": "SQS", "Destination": {"GetAtt": f"{own[function]}.Arn"}}
    for function, queue in own.items():
        url = env(t, function)["DATAMCP_SERVERLESS_DEAD_LETTER_QUEUE_URL"]
        assert url == {"Ref": queue}  # permanent failures go there once, not retried


def test_queues_survive_the_stack_and_are_watched() -> None:
    t = template()
    queues = of_type(t, "AWS::SQS::Queue")
    assert len(queues) == 5
    for name, queue in queues.items():
        assert queue["DeletionPolicy"] == queue["UpdateReplacePolicy"] == "Retain", name
    alarms = [a["Properties"] for a in of_type(t, "AWS::CloudWatch::Alarm").values()]
    watched = {
        a["Dimensions"][0]["Value"]["GetAtt"].split(".")[0]
        for a in alarms
        if a["MetricName"] == "ApproximateNumberOfMessagesVisible"
    }
    assert watched == {n for n in queues if n.endswith("DeadLetterQueue")}
    erring = {a["Dimensions"][0]["Value"]["Ref"] for a in alarms if a["MetricName"] == "Errors"}
    assert erring == set(functions(t))
    for alarm in alarms:
        assert alarm["Threshold"] == 0 and alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_logs_are_kept_for_a_bounded_time_in_each_function_s_own_group() -> None:
    t = template()
    groups = of_type(t, "AWS::Logs::LogGroup")
    for name, props in functions(t).items():
        group = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


def test_the_schedule_does_not_overlap_itself() -> None:
    t = template()
    schedule = functions(t)["ScheduleFunction"]
    (tick,) = schedule["Events"].values()
    assert tick["Properties"]["Schedule"] == "rate(1 minute)"
    assert schedule["Timeout"] < 60


def test_migrations_run_once_per_release_before_the_functions_change() -> None:
    t = template()
    migrations = t["Resources"]["Migrations"]
    assert migrations["Type"] == "Custom::DatabaseMigrations"
    assert migrations["Properties"]["ServiceToken"] == {"Ref": "MigrateFunction.Alias"}
    assert migrations["Properties"]["CodeVersion"] == {"Ref": "MigrateFunction.Version"}
    assert functions(t)["MigrateFunction"]["AutoPublishAlias"]
    for name, resource in t["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function" and name != "MigrateFunction":
            assert resource["DependsOn"] == "Migrations", name


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    props = resource.get("Properties", {})
    documents = [props.get("PolicyDocument")] + [
        p.get("PolicyDocument") for p in props.get("Policies", []) if isinstance(p, dict)
    ]
    return [s for d in documents if d for s in d["Statement"]]


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def test_least_privilege_in_what_cloudformation_deploys(deployed: dict[str, Any]) -> None:
    resources = deployed["Resources"]
    roles = of_type(deployed, "AWS::IAM::Role")
    # No AWS-managed policy (SAM's defaults grant SQS and logs on "*").
    for name, role in roles.items():
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            assert "Ref" in arn, (name, arn)
    for name, resource in resources.items():
        for statement in _statements(resource):
            actions = _actions(statement)
            assert not any("*" in a for a in actions), (name, actions)
            if statement.get("Resource") == "*":
                assert set(actions) <= UNSCOPED, (name, actions)
    # Each function's role names its own queue, secret and log group only.
    expected = {
        "TasksRole": {"TaskQueue", "TaskDeadLetterQueue", "TasksLogGroup", "DatabaseSecretArn"},
        "EventsRole": {"EventsDeadLetterQueue", "EventsLogGroup", "DatabaseSecretArn"},
        "ScheduleRole": {"ScheduleDeadLetterQueue", "ScheduleLogGroup", "DatabaseSecretArn"},
        "MigrateRole": {
            "MigrateDeadLetterQueue",
            "MigrateLogGroup",
            "MigrationSecretArn",
            "DatabaseSecretArn",
        },
    }
    for role, names in expected.items():
        named: set[str] = set()
        for statement in _statements(resources[role]):
            if statement.get("Resource") != "*":
                named |= _named(statement["Resource"])
        assert named == names, role
    functions_ = of_type(deployed, "AWS::Lambda::Function")
    assert {f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions_.values()} == set(expected)


def _named(value: Any) -> set[str]:
    """The resources and parameters an IAM Resource value refers to."""
    if isinstance(value, dict):
        if "Ref" in value:
            return {value["Ref"]}
        if "Fn::GetAtt" in value:
            return {value["Fn::GetAtt"][0]}
        if "Fn::If" in value:
            return _named(value["Fn::If"][1]) | _named(value["Fn::If"][2])
    if isinstance(value, list):
        return set().union(*(_named(v) for v in value))
    raise AssertionError(f"unexpected resource {value!r}")
