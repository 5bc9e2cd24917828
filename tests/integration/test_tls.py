"""TLS and mutual TLS on the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio

from datamcp.v1 import health_pb2, health_pb2_grpc
from tests.certs import Pki, make_pki
from tests.support import clean_env, datamcp_command, make_settings, running_server

REQUEST = health_pb2.GetHealthReportRequest()


def _channel(target: str, pki: Pki, *, client_cert: bool) -> aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return aio.secure_channel(target, credentials)


async def test_tls_serves_and_plaintext_clients_fail(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = make_settings(
        tmp_path, **{"tls.cert_file": str(pki.server_cert), "tls.key_file": str(pki.server_key)}
    )
    async with running_server(settings) as srv:
        async with _channel(srv.target, pki, client_cert=False) as channel:
            reply = await health_pb2_grpc.HealthServiceStub(channel).GetHealthReport(REQUEST)
            assert reply.report.serving[""]
        async with aio.insecure_channel(srv.target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthServiceStub(plain).GetHealthReport(REQUEST, timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = make_settings(
        tmp_path,
        **{
            "tls.cert_file": str(pki.server_cert),
            "tls.key_file": str(pki.server_key),
            "tls.client_ca_file": str(pki.ca),
        },
    )
    async with running_server(settings) as srv:
        async with _channel(srv.target, pki, client_cert=True) as channel:
            reply = await health_pb2_grpc.HealthServiceStub(channel).GetHealthReport(REQUEST)
            assert reply.report.serving[""]
        async with _channel(srv.target, pki, client_cert=False) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthServiceStub(channel).GetHealthReport(REQUEST, timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_cli_speaks_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = make_settings(
        tmp_path,
        **{
            "tls.cert_file": str(pki.server_cert),
            "tls.key_file": str(pki.server_key),
            "tls.client_ca_file": str(pki.ca),
        },
    )
    async with running_server(settings) as srv:
        args = ["health", "--target", srv.target, "--tls-ca", str(pki.ca), "--json"]
        client = [*args, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        proc = await asyncio.create_subprocess_exec(
            *datamcp_command(*client), stdout=asyncio.subprocess.PIPE, env=clean_env()
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        without_cert = await asyncio.create_subprocess_exec(
            *datamcp_command(*args, "--timeout", "2"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=clean_env(),
        )
        assert await asyncio.wait_for(without_cert.wait(), 60) == 6  # unavailable
    assert proc.returncode == 0
    assert b'"status": "HEALTHY"' in out
