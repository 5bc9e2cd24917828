"""Stream-job RPCs of PipelineService (CreateStreamJob ... PushRecords).

SKELETON: PipelineServicer (pipeline_service.py) inherits
:class:`StreamJobMethods`, so the stream-job RPCs are implemented here and
the batch RPCs there. The servicer sets ``self.streams`` (the core stream-job
service, ``app.streams``) before serving.
"""

from __future__ import annotations

from typing import Any


class StreamJobMethods:
    """Mixin holding the stream-job RPC handlers; uses ``self.streams``."""

    streams: Any
