"""S3 objects as a source (downloaded to a temp file, then read as CSV or
JSON Lines) and as a destination (written to a temp file, uploaded on
commit: the object appears whole or not at all)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamcp.adapters.pipelines.csv import CsvDestination, CsvSource
from datamcp.adapters.pipelines.jsonl import JsonlDestination, JsonlSource
from datamcp.core.pipelines.checker import Checker, delimiter, file_format, null_values
from datamcp.core.pipelines.ports import PermanentError, SourceBatch, TransientError, WriteResult

if TYPE_CHECKING:
    import pyarrow as pa


class S3Settings:
    def __init__(self, region: str, endpoint_url: str | None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url

    def client(self) -> Any:
        import aioboto3

        session = aioboto3.Session()
        return session.client("s3", region_name=self.region, endpoint_url=self.endpoint_url)


def _fail(exc: Exception, what: str) -> Exception:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
            return TransientError(f"{what}: {exc}")
        return PermanentError(f"{what}: {code or exc}", "S3_ERROR")
    return TransientError(f"{what}: {exc}")


class S3Source:
    def __init__(self, s3: S3Settings, options: dict[str, Any]) -> None:
        self.s3 = s3
        self.options = options
        self._temp: str | None = None
        self._inner: CsvSource | JsonlSource | None = None

    @property
    def columnar(self) -> bool:
        return isinstance(self._inner, CsvSource)

    async def open(self) -> list[str]:
        bucket, key = self.options["bucket"], self.options["key"]
        fd, self._temp = tempfile.mkstemp(prefix="datamcp-s3-")
        os.close(fd)
        try:
            async with self.s3.client() as client:
                await client.download_file(bucket, key, self._temp)
        except Exception as exc:
            raise _fail(exc, f"s3://{bucket}/{key}") from None
        display = f"s3://{bucket}/{key}"
        if self.options["format"] == "jsonl":
            self._inner = JsonlSource(
                Path(self._temp), columns=self.options["columns"], display=display
            )
        else:
            self._inner = CsvSource(
                Path(self._temp),
                delimiter=self.options["delimiter"],
                columns=self.options["columns"],
                null_values=self.options.get("null_values", []),
                display=display,
            )
        return await self._inner.open()

    async def read(self, size: int) -> SourceBatch | None:
        return None if self._inner is None else await self._inner.read(size)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None


class S3Destination:
    def __init__(self, s3: S3Settings, options: dict[str, Any], run_id: str) -> None:
        self.s3 = s3
        self.options = options
        self._dir = tempfile.mkdtemp(prefix="datamcp-s3-")
        target = Path(self._dir) / "object"
        self._file: CsvDestination | JsonlDestination = (
            CsvDestination(target, run_id)
            if options["format"] == "csv"
            else JsonlDestination(target, run_id)
        )

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        await self._file.open(columns, types)

    async def write(self, table: pa.Table) -> WriteResult:
        return await self._file.write(table)

    async def commit(self) -> None:
        await self._file.commit()
        bucket, key = self.options["bucket"], self.options["key"]
        try:
            async with self.s3.client() as client:
                await client.upload_file(str(self._file.path), bucket, key)
        except Exception as exc:
            raise _fail(exc, f"upload to s3://{bucket}/{key}") from None
        finally:
            await asyncio.to_thread(self._cleanup)

    async def abort(self) -> None:
        await self._file.abort()
        await asyncio.to_thread(self._cleanup)

    def _cleanup(self) -> None:
        for name in os.listdir(self._dir) if os.path.isdir(self._dir) else []:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


# ---- the ``s3`` kind ----------------------------------------------------------------------

KIND = "s3"


def parse_source(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = c.mapping(raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("bucket", "key", "format", "delimiter", "columns", "null_values"))
    key = c.string(o, "key", path, required=True)
    return {
        "bucket": c.string(o, "bucket", path, required=True),
        "key": key,
        "format": file_format(c, o, path, key),
        "delimiter": delimiter(c, o, path),
        "null_values": null_values(c, o, path),
        "columns": c.names(o.get("columns"), f"{path}.columns"),
    }


def parse_destination(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = c.mapping(raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("bucket", "key", "format"))
    key = c.string(o, "key", path, required=True)
    return {
        "bucket": c.string(o, "bucket", path, required=True),
        "key": key,
        "format": file_format(c, o, path, key),
    }


def source(connectors: Any, o: Mapping[str, Any], ctx: Any, where: str) -> S3Source:
    return S3Source(connectors.s3, dict(o))


def destination(connectors: Any, o: Mapping[str, Any], run_id: str, where: str) -> S3Destination:
    return S3Destination(connectors.s3, dict(o), run_id)
