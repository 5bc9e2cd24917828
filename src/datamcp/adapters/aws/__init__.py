"""AWS adapters: event-bus brokers for EventBridge and SQS (aioboto3).

The only package that imports boto; the core sees them as ``Broker``s.
"""

from datamcp.adapters.aws.eventbridge import EventBridgeBroker
from datamcp.adapters.aws.sqs import SqsBroker

__all__ = ["EventBridgeBroker", "SqsBroker"]
