"""Agents: capability routing, the task lifecycle, agent-to-agent calls and
remote agents. Pure core: no grpc, protobuf or boto."""
