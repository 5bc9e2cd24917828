"""DataMCP mesh: an agent and data-flow backbone served over gRPC and AWS Lambda.

The generated protobuf modules live in ``gen/datamcp/v1`` and the hand-written
code in ``src/datamcp``; extending ``__path__`` lets both trees form the one
``datamcp`` package (``datamcp.v1`` is generated, everything else is not).
The list is extended in place: it is also the package's
``__spec__.submodule_search_locations``, which the import rules (``make
imports``) read to see both trees.
"""

from pkgutil import extend_path

__path__[:] = extend_path(__path__, __name__)

__version__ = "0.1.0"
