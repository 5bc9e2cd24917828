"""Stream processing: keyed event-time windows over bus events or pushed
records, with watermarks, allowed lateness and exactly-once checkpoints."""

from datamcp.core.streams.model import StreamJob, StreamSpec
from datamcp.core.streams.service import PushMessage, PushSummary, StreamPolicy, StreamService

__all__ = ["PushMessage", "PushSummary", "StreamJob", "StreamPolicy", "StreamService", "StreamSpec"]
