"""The entry point: ``await Client.connect(...)`` and its sub-clients."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc import aio

from datamcp_client._rpc import DEFAULT_RETRY, Connection, RetryPolicy
from datamcp_client.agents import AgentsClient
from datamcp_client.errors import UnavailableError
from datamcp_client.events import EventsClient
from datamcp_client.health import HealthClient
from datamcp_client.memory import MemoryClient
from datamcp_client.pipelines import PipelinesClient

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS to the server. All fields optional: with none, the system roots are trusted.

    Attributes:
        server_root_ca_cert: PEM bytes of the CA that signed the server's certificate.
        client_cert: PEM client certificate (mutual TLS).
        client_private_key: PEM key of ``client_cert``.
        domain: the name to check the server's certificate against, when it
            differs from the address's host.
    """

    server_root_ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_private_key: bytes | None = None
    domain: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        domain: str | None = None,
    ) -> TLSConfig:
        """Read the PEM files that are given."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key), domain)


def _channel(
    target: str, tls: bool | TLSConfig, options: Sequence[tuple[str, object]]
) -> aio.Channel:
    if tls is False:
        return aio.insecure_channel(target, options=options)
    config = tls if isinstance(tls, TLSConfig) else TLSConfig()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.server_root_ca_cert,
        private_key=config.client_private_key,
        certificate_chain=config.client_cert,
    )
    if config.domain:
        options = [*options, ("grpc.ssl_target_name_override", config.domain)]
    return aio.secure_channel(target, credentials, options=options)


class Client:
    """A connection to a DataMCP mesh server and its typed sub-clients.

    Build it with :meth:`connect`; the constructor takes a ready
    :class:`Connection` (handy in tests). Use it as ``async with`` or call
    :meth:`close`.

    Attributes:
        agents: tasks and agents (:class:`AgentsClient`).
        events: the event bus (:class:`EventsClient`).
        pipelines: batch pipelines (:class:`PipelinesClient`).
        memory: memory records and sync (:class:`MemoryClient`).
        health: health report and metrics (:class:`HealthClient`).

    Example:
        async with await Client.connect("127.0.0.1:50051") as client:
            task = await client.agents.execute("echo", {"a": 1})
            print(task.state, task.result)   # TaskState.SUCCEEDED {'a': 1}
    """

    def __init__(self, connection: Connection, target: str = "") -> None:
        self.connection = connection
        self.target = target
        self.agents = AgentsClient(connection)
        self.events = EventsClient(connection)
        self.pipelines = PipelinesClient(connection)
        self.memory = MemoryClient(connection)
        self.health = HealthClient(connection)

    @classmethod
    async def connect(
        cls,
        target: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        token: str | None = None,
        tls: bool | TLSConfig = False,
        timeout: float | None = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        metadata: Sequence[tuple[str, str]] = (),
        connect_timeout: float = 10.0,
        channel_options: Sequence[tuple[str, object]] = (),
    ) -> Client:
        """Open a channel and wait until the server answers it.

        Args:
            target: ``HOST:PORT`` of the server.
            api_key: sent as ``authorization: ApiKey <key>``.
            token: a JWT, sent as ``authorization: Bearer <token>`` (wins over ``api_key``).
            tls: False for plaintext, True for TLS with the system roots, or a
                :class:`TLSConfig`.
            timeout: default deadline of unary calls in seconds (None: none).
            retry: how idempotent calls are retried.
            metadata: more headers to send on every call.
            connect_timeout: seconds to wait for the connection.
            channel_options: extra gRPC channel arguments.

        Raises:
            UnavailableError: the server could not be reached.
        """
        headers = list(metadata)
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        elif api_key:
            headers.append(("authorization", f"ApiKey {api_key}"))
        channel = _channel(target, tls, channel_options)
        try:
            await _ready(channel, target, connect_timeout)
        except BaseException:
            await channel.close()
            raise
        return cls(Connection(channel, metadata=headers, timeout=timeout, retry=retry), target)

    async def close(self) -> None:
        await self.connection.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _ready(channel: aio.Channel, target: str, timeout: float) -> None:
    """Connect now; fail fast when the connection is refused rather than at the first call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise UnavailableError(
                f"cannot reach the server at {target}", code=grpc.StatusCode.UNAVAILABLE
            )
        left = deadline - loop.time()
        if left <= 0:
            raise UnavailableError(f"no connection to {target} within {timeout:g}s")
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except TimeoutError:
            raise UnavailableError(f"no connection to {target} within {timeout:g}s") from None
        state = channel.get_state(try_to_connect=True)
