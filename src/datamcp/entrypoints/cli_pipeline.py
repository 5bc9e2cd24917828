"""``datamcp pipeline validate FILE``: check a pipeline file offline.

It gives the same answers as the ValidatePipeline RPC without a preview:
the spec's own problems, then the problems only the configuration can tell
(paths outside ``pipelines.data_roots``, unknown connections and APIs),
read from the same config file, environment and flags as ``serve``.
Exit 0 when valid, 1 with one ``field: problem`` line per problem, 2 when
the file or the configuration cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument


def _validate(args: argparse.Namespace) -> int:
    from datamcp.adapters.pipelines import connectors_from
    from datamcp.core.pipelines.service import Definition
    from datamcp.entrypoints.cli import _settings

    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"datamcp: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    settings = _settings(args)
    problems: list[FieldViolation]
    spec: Any = None
    try:
        doc = Definition(text=text or " ").document()
    except InvalidArgument as exc:
        problems = list(exc.violations)
    else:
        spec = doc.spec
        problems = connectors_from(settings.pipelines).check(doc.spec)
    if args.json:
        print(
            json.dumps(
                {
                    "valid": not problems,
                    "problems": [
                        {"field": p.field, "description": p.description} for p in problems
                    ],
                    "spec": spec.to_dict() if spec is not None and not problems else None,
                },
                indent=2,
            )
        )
    elif problems:
        for p in problems:
            print(f"{p.field}: {p.description}")
    else:
        print(f"{args.file}: valid")
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    from datamcp.entrypoints.cli import _add_setting_flags

    pipeline = sub.add_parser("pipeline", help="pipeline tools")
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    validate = pipeline_sub.add_parser(
        "validate", help="check a pipeline file (YAML or JSON) against this configuration"
    )
    validate.add_argument("file", help="the pipeline file")
    validate.add_argument("--json", action="store_true", help="print the answer as JSON")
    _add_setting_flags(validate)
    validate.set_defaults(func=_validate)
