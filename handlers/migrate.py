"""``handlers.migrate.handler``: the deployment's migration step, as a function.

It runs what ``datamcp db upgrade`` runs (``bootstrap.migrate_database``:
the application schema, then every memory store's, each under its
database's schema lock), with the schema owner's credentials (its own
``database_url_secret``), so the other functions can use a database user
without DDL rights (``database_migrate = verify``).

Invoked once per release, two ways:

- **By the stack** (``infra/sam/template.yaml``): a CloudFormation custom
  resource whose properties carry this function's published version, so
  every deployment that changes the code migrates, before the functions that
  depend on it are updated. The CloudFormation protocol: the outcome is PUT
  to the request's ``ResponseURL`` (always, success or not, or the stack
  waits until the resource's ``ServiceTimeout``); ``Delete`` does nothing
  (the schema and its data outlive the stack); a rollback (an ``Update``
  back to the older code) finds the schema ahead of that code and leaves it.
- **By hand**: ``aws lambda invoke --function-name <MigrateFunction> out.json``
  answers what was done, or fails with why.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from handlers import _runtime, _telemetry

log = logging.getLogger("datamcp.handlers")

#: The one physical id of the schema: an Update never "replaces" it.
PHYSICAL_ID = "datamcp-database-schema"
#: CloudFormation shows at most 4 KB of a reason.
MAX_REASON = 3500
PUT_ATTEMPTS = 4


@_telemetry.observed("migrate", _runtime.local_context)
def handler(event: Any, context: _runtime.LambdaContext | None) -> dict[str, Any]:
    if isinstance(event, Mapping) and "ResponseURL" in event and "RequestType" in event:
        return _custom_resource(event)
    done = _migrate()
    _telemetry.count(processed=1)
    return {"migrated": done}


def _migrate() -> list[str]:
    from datamcp.bootstrap import migrate_database
    from datamcp.config.settings import load_settings

    settings = load_settings()
    _telemetry.install(settings.logging.level)
    done = _runtime.loop().run_until_complete(migrate_database(settings))
    for line in done:
        log.info(line)
    return done


def _custom_resource(event: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(event["RequestType"])
    status, reason, data = "SUCCESS", "", {}
    if kind in ("Create", "Update"):
        try:
            done = _migrate()
            reason = "; ".join(done)
            data = {"Outcome": done[0] if done else ""}
            _telemetry.count(processed=1)
        except Exception as exc:  # answered, never raised: the stack must hear back
            log.exception("migrations failed")
            status, reason = "FAILED", f"migrations failed: {type(exc).__name__}: {exc}"
            _telemetry.count(failed=1)
    else:
        reason = "the schema outlives the stack; nothing done"
    answer = {
        "Status": status,
        "Reason": reason[:MAX_REASON],
        "PhysicalResourceId": str(event.get("PhysicalResourceId") or PHYSICAL_ID),
        "StackId": event.get("StackId", ""),
        "RequestId": event.get("RequestId", ""),
        "LogicalResourceId": event.get("LogicalResourceId", ""),
        "Data": data,
    }
    _answer(str(event["ResponseURL"]), answer)
    return answer


def _answer(url: str, body: Mapping[str, Any]) -> None:
    """PUT the outcome to CloudFormation's pre-signed URL (its signature
    covers an empty content type), retrying network trouble a few times.
    Raises when it never got through, so Lambda retries the invocation."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(data))}
    )
    for attempt in range(1, PUT_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read()
            return
        except OSError:
            if attempt == PUT_ATTEMPTS:
                raise
            log.warning("answering CloudFormation failed; retrying", exc_info=True)
            time.sleep(0.5 * 2**attempt)
