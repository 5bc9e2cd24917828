"""AWS Lambda entry points: thin translators between cloud events and the core.

They import no grpc or protobuf service code, so a cold start pays only for
what the event-driven path uses.
"""
