"""Authentication and authorization at the entry, through the real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2 as std_health_pb2
from grpc_health.v1 import health_pb2_grpc as std_health_grpc

from datamcp.core.errors import ConfigError
from datamcp.v1 import health_pb2, health_pb2_grpc
from tests.probe import S, probe_call, probe_registration
from tests.support import (
    API_KEY,
    HS256_SECRET,
    OPERATOR_KEY,
    apikey,
    auth_overrides,
    bearer,
    hs256_token,
    make_settings,
    rich_details,
    running_server,
)

REQUEST = health_pb2.GetHealthReportRequest()


async def _report_error(srv_channel: grpc.aio.Channel, metadata: object) -> grpc.aio.AioRpcError:
    stub = health_pb2_grpc.HealthServiceStub(srv_channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetHealthReport(REQUEST, metadata=metadata)
    return err.value


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "MALFORMED_CREDENTIALS"),
        ((("authorization", "Bearer"),), "MALFORMED_CREDENTIALS"),
        ((("authorization", "Bearer not.a.jwt"),), "MALFORMED_TOKEN"),
        ((("authorization", "ApiKey wrong-key-0123456789abcdef"),), "INVALID_API_KEY"),
        (bearer(hs256_token(secret="x" * 48)), "BAD_SIGNATURE"),
        (bearer(hs256_token(expires_in=-3600)), "TOKEN_EXPIRED"),
    ],
    ids=["missing", "not-bearer", "empty", "malformed-jwt", "unknown-key", "bad-sig", "expired"],
)
async def test_bad_credentials_are_unauthenticated_with_reason(
    tmp_path: Path, metadata: object, reason: str
) -> None:
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as channel:
            error = await _report_error(channel, metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_details(error)["ErrorInfo"].reason == reason
    assert error.details()


async def test_token_without_exp_is_rejected(tmp_path: Path) -> None:
    token = jwt.encode({"sub": "bob"}, "s" * 48, algorithm="HS256")
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as channel:
            error = await _report_error(channel, bearer(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "exp" in error.details()


async def test_principal_reaches_handlers_for_api_keys_and_tokens(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **auth_overrides())
    async with running_server(settings, [probe_registration()]) as srv:
        async with srv.channel() as channel:
            whoami = probe_call(channel, "WhoAmI")
            by_key = await whoami(S(), metadata=apikey(API_KEY))
            token = hs256_token(sub="bob", tenant="globex", roles=["user", "auditor"])
            by_token = await whoami(S(), metadata=(*bearer(token), ("x-request-id", "req-42")))
    assert by_key.value.startswith("alice|acme|user|")
    assert by_token.value == "bob|globex|auditor,user|req-42"


async def test_wrong_role_is_permission_denied_and_right_role_passes(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetMetrics(health_pb2.GetMetricsRequest(), metadata=apikey(API_KEY))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            info = rich_details(err.value)["ErrorInfo"]
            assert info.reason == "MISSING_ROLE"
            assert "operator" in info.metadata["required_roles"]
            # A plain user may still read the report.
            await stub.GetHealthReport(REQUEST, metadata=apikey(API_KEY))
            ok = await stub.GetMetrics(
                health_pb2.GetMetricsRequest(), metadata=apikey(OPERATOR_KEY)
            )
            admin = hs256_token(roles=["admin"])
            await stub.GetMetrics(health_pb2.GetMetricsRequest(), metadata=bearer(admin))
    methods = {m.method: m for m in ok.snapshot.methods}
    denied = methods["/datamcp.v1.HealthService/GetMetrics"]
    assert denied.status_counts["PERMISSION_DENIED"] == 1
    assert methods["/datamcp.v1.HealthService/GetHealthReport"].request_count == 1


async def test_health_and_reflection_stay_open_without_credentials(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as channel:
            reply = await std_health_grpc.HealthStub(channel).Check(
                std_health_pb2.HealthCheckRequest(service="")
            )
            assert reply.status == std_health_pb2.HealthCheckResponse.SERVING
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for answer in stream:
                names = {s.name for s in answer.list_services_response.service}
                assert "datamcp.v1.HealthService" in names
                break


def _tenantless_token(**claims: object) -> str:
    payload: dict[str, object] = {"sub": "tim", "roles": ["user"], "exp": int(time.time() + 60)}
    payload.update(claims)
    return jwt.encode(payload, HS256_SECRET, algorithm="HS256")


async def test_token_without_tenant_claim_is_refused(tmp_path: Path) -> None:
    """A token that names no tenant must not land in a shared tenant."""
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as channel:
            for token, reason in (
                (_tenantless_token(), "MISSING_TENANT"),
                (_tenantless_token(tenant=""), "MISSING_TENANT"),
                (_tenantless_token(tenant=["acme"]), "INVALID_TENANT"),
                (_tenantless_token(tenant="a|b"), "INVALID_TENANT"),
                (_tenantless_token(tenant="*"), "INVALID_TENANT"),
            ):
                error = await _report_error(channel, bearer(token))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, token
                assert rich_details(error)["ErrorInfo"].reason == reason
                if reason == "MISSING_TENANT":
                    assert "'tenant' claim" in error.details()
                    assert "auth.jwt.default_tenant" in error.details()


async def test_configured_default_tenant_takes_tenantless_tokens(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **auth_overrides(), **{"auth.jwt.default_tenant": "initech"})
    async with running_server(settings, [probe_registration()]) as srv:
        async with srv.channel() as channel:
            whoami = probe_call(channel, "WhoAmI")
            reply = await whoami(S(), metadata=bearer(_tenantless_token()))
            named = await whoami(S(), metadata=bearer(hs256_token(sub="tim", tenant="acme")))
    assert reply.value.startswith("tim|initech|user|")
    assert named.value.startswith("tim|acme|user|")


def test_default_tenant_must_be_a_tenant_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path, **auth_overrides(), **{"auth.jwt.default_tenant": "*"})
    assert "auth.jwt.default_tenant" in str(err.value)


@pytest.mark.parametrize(
    "method_roles",
    [
        {"/datamcp.v1.EventService/Publish": ["writer"]},
        {"/datamcp.v1.HealthService/*": ["user"]},
        {"/datamcp.v1.HealthService/GetMetrics": ["monitor"]},
        {"/datamcp.v1.HealthService/GetMetrics": []},
    ],
    ids=["other-method", "service-wildcard", "added-role", "empty-list"],
)
async def test_configured_method_roles_keep_the_builtin_protection(
    tmp_path: Path, method_roles: dict[str, list[str]]
) -> None:
    """Configuring roles for anything never opens GetMetrics to a plain user;
    an entry for GetMetrics adds roles to admin and operator."""
    settings = make_settings(tmp_path, **auth_overrides(), **{"auth.method_roles": method_roles})
    async with running_server(settings) as srv:
        async with srv.channel() as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            metrics = health_pb2.GetMetricsRequest()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetMetrics(metrics, metadata=apikey(API_KEY))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            required = rich_details(err.value)["ErrorInfo"].metadata["required_roles"]
            assert {"admin", "operator"} <= set(required.split(","))
            await stub.GetMetrics(metrics, metadata=apikey(OPERATOR_KEY))
            await stub.GetMetrics(metrics, metadata=bearer(hs256_token(roles=["admin"])))
            added = method_roles.get("/datamcp.v1.HealthService/GetMetrics")
            if added:
                await stub.GetMetrics(metrics, metadata=bearer(hs256_token(roles=added)))


def _rsa_keypair() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem


def _rs256(key: rsa.RSAPrivateKey, kid: str | None = None, **claims: object) -> str:
    payload = {"sub": "rita", "tenant": "initech", "roles": "user admin", "exp": time.time() + 60}
    payload.update(claims)
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm="RS256", headers=headers)


async def test_rs256_with_public_key_file(tmp_path: Path) -> None:
    key, pem = _rsa_keypair()
    other, _ = _rsa_keypair()
    (tmp_path / "pub.pem").write_bytes(pem)
    settings = make_settings(
        tmp_path, **{"auth.jwt.rs256_public_key_file": str(tmp_path / "pub.pem")}
    )
    async with running_server(settings, [probe_registration()]) as srv:
        async with srv.channel() as channel:
            whoami = probe_call(channel, "WhoAmI")
            reply = await whoami(S(), metadata=bearer(_rs256(key)))
            assert reply.value.startswith("rita|initech|admin,user|")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await whoami(S(), metadata=bearer(_rs256(other)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich_details(err.value)["ErrorInfo"].reason == "BAD_SIGNATURE"


async def test_rs256_with_jwks_file_selects_key_by_kid(tmp_path: Path) -> None:
    first, _ = _rsa_keypair()
    second, _ = _rsa_keypair()
    keys = []
    for kid, k in (("k1", first), ("k2", second)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
        jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
        keys.append(jwk)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    settings = make_settings(
        tmp_path,
        **{"auth.jwt.jwks_file": str(tmp_path / "jwks.json"), "auth.jwt.audience": "mesh"},
    )
    async with running_server(settings, [probe_registration()]) as srv:
        async with srv.channel() as channel:
            whoami = probe_call(channel, "WhoAmI")
            assert (await whoami(S(), metadata=bearer(_rs256(second, "k2", aud="mesh")))).value
            for token, reason in (
                (_rs256(second, "k1", aud="mesh"), "BAD_SIGNATURE"),
                (_rs256(second, "k9", aud="mesh"), "UNSUPPORTED_TOKEN_KEY"),
                (_rs256(second, "k2", aud="elsewhere"), "INVALID_TOKEN"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await whoami(S(), metadata=bearer(token))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert rich_details(err.value)["ErrorInfo"].reason == reason


def _every_method() -> list[tuple[str, bool, bool]]:
    """(full method name, client streaming, server streaming) of every datamcp.v1 RPC."""
    from datamcp.v1 import agents_pb2, events_pb2, memory_pb2, pipelines_pb2

    modules = (agents_pb2, events_pb2, health_pb2, memory_pb2, pipelines_pb2)
    return [
        (f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming)
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    ]


async def test_every_method_is_served_behind_the_entry(tmp_path: Path) -> None:
    """Each service's handlers are wrapped once at registration and served from
    one table: every method must be found (not UNIMPLEMENTED) and refused
    without credentials, streaming ones included."""
    methods = _every_method()
    assert len(methods) > 50
    identity = bytes
    async with running_server(make_settings(tmp_path, **auth_overrides())) as srv:
        async with srv.channel() as channel:
            for method, client_streaming, server_streaming in methods:
                kwargs = {"request_serializer": identity, "response_deserializer": identity}
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    if client_streaming and server_streaming:
                        call = channel.stream_stream(method, **kwargs)(iter(()), timeout=10)
                        await call.read()
                    elif client_streaming:
                        await channel.stream_unary(method, **kwargs)(iter(()), timeout=10)
                    elif server_streaming:
                        await channel.unary_stream(method, **kwargs)(b"", timeout=10).read()
                    else:
                        await channel.unary_unary(method, **kwargs)(b"", timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
                assert rich_details(err.value)["ErrorInfo"].reason == "MISSING_CREDENTIALS"
