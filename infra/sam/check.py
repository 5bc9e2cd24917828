"""``make sam-check``: the template as AWS will see it.

1. AWS's SAM transform (aws-sam-translator, the code CloudFormation runs for
   ``Transform: AWS::Serverless-2016-10-31``), offline, with every local
   ``CodeUri`` replaced by an S3 URI as ``sam package`` / ``sam deploy`` do;
2. cfn-lint on the transformed CloudFormation (``.build/sam/template.json``).

Both must be clean: cfn-lint on the SAM source alone does not catch what the
transform rejects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "sam" / "template.yaml"
OUT = ROOT / ".build" / "sam" / "template.json"
#: What `sam package` writes in place of a local directory.
PACKAGED = "s3://datamcp-artifacts/datamcp/0123456789abcdef0123456789abcdef"
REGION = "us-east-1"
#: Sample values for the parameters the transform may need to resolve.
PARAMETERS = {
    "DatabaseSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:datamcp-app-AbCdEf",
    "MigrationSecretArn": "",
    "SubnetIds": ["subnet-0123456789abcdef0"],
    "SecurityGroupIds": ["sg-0123456789abcdef0"],
    "AWS::Region": REGION,
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
}


def packaged(template: dict[str, Any]) -> dict[str, Any]:
    globals_ = template.get("Globals", {}).get("Function", {})
    if isinstance(globals_.get("CodeUri"), str):
        globals_["CodeUri"] = PACKAGED
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and isinstance(
            props.get("CodeUri"), str
        ):
            props["CodeUri"] = PACKAGED
    return template


def transform() -> dict[str, Any]:
    """The template after the SAM transform (exits 1 listing what it rejects)."""
    import boto3
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.yaml_helper import yaml_parse

    template = packaged(yaml_parse(TEMPLATE.read_text()))
    # The template attaches no AWS-managed policy by name, so the transform
    # never needs IAM's list of them (the one thing it would ask AWS for).
    translator = Translator({}, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    try:
        out: dict[str, Any] = translator.translate(
            template, parameter_values=dict(PARAMETERS), get_managed_policy_map=dict
        )
    except InvalidDocumentException as exc:
        for cause in exc.causes:
            print(f"{TEMPLATE.relative_to(ROOT)}: SAM transform: {cause.message}", file=sys.stderr)
        raise SystemExit(1) from None
    return out


def main() -> int:
    transformed = transform()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(transformed, indent=1, sort_keys=True))
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    lint = subprocess.run([str(cfn_lint), str(OUT)], check=False)
    if lint.returncode == 0:
        count = len(transformed["Resources"])
        print(f"SAM transform and cfn-lint clean: {OUT.relative_to(ROOT)} ({count} resources)")
    return lint.returncode


if __name__ == "__main__":
    sys.exit(main())
