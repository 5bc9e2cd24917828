"""The real Lambda runtime emulator running the built Lambda package.

- ``aws-lambda-rie``: the emulator AWS ships inside the aws-sam-cli wheel,
  downloaded at test time into ``.cache/`` (ignored by git; never committed).
- The package: ``.build/lambda`` from ``make lambda-package`` (manylinux
  wheels for the template's runtime), not the source tree.
- The runtime: a Python of the template's version (``python3.12``), started
  with ``-S`` (no site-packages of its own, so only the package and the
  runtime interface client are importable, as in Lambda's ``/var/task``),
  running ``awslambdaric`` (installed for that version into ``.cache/``, as
  the managed runtime provides it) behind the emulator.

Used by ``tests/e2e/test_lambda_rie.py`` and the serverless bench.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
PACKAGE = ROOT / ".build" / "lambda"
INVOKE = "/2015-03-31/functions/function/invocations"
_REPORT = re.compile(
    r"REPORT RequestId: (\S+)\s+(?:Init Duration: ([\d.]+) ms\s+)?Duration: ([\d.]+) ms"
)


class Unavailable(RuntimeError):
    """Something the emulator needs cannot be had on this machine."""


def _packaging() -> Any:
    spec = importlib.util.spec_from_file_location("lambda_package", ROOT / "infra/sam/package.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runtime() -> tuple[str, str]:
    """(Python version, path of an interpreter of it) for the template's runtime."""
    packaging = _packaging()
    version, _ = packaging.target()
    python = packaging.runtime_python(version)
    if python is None:
        raise Unavailable(f"no Python {version} on this machine (set LAMBDA_PYTHON)")
    return version, python


def build_package() -> Path:
    """``make lambda-package`` (a no-op when the package is up to date)."""
    subprocess.run(["make", "-s", "lambda-package"], cwd=ROOT, check=True, timeout=900)
    return PACKAGE


def emulator() -> Path:
    """The emulator binary for this machine, downloaded once into .cache/."""
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    where = CACHE / "lambda-rie"
    binary = where / f"aws-lambda-rie-{arch}"
    if binary.exists():
        return binary
    where.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(where),
            "aws-sam-cli",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = sorted(where.glob("aws_sam_cli-*.whl"))
    if download.returncode != 0 or not wheels:
        raise Unavailable(f"cannot download aws-sam-cli for the emulator: {download.stderr[-300:]}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        data = wheel.read(f"samcli/local/rapid/aws-lambda-rie-{arch}")
    partial = binary.with_suffix(".part")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(binary)
    for wheel_file in wheels:  # only the binary is kept
        wheel_file.unlink()
    return binary


def interface_client(version: str) -> Path:
    """awslambdaric (the runtime interface client) for the runtime's Python."""
    where = CACHE / f"lambda-ric-cp{version.replace('.', '')}"
    if (where / "awslambdaric").is_dir():
        return where
    partial = where.with_suffix(".part")
    shutil.rmtree(partial, ignore_errors=True)
    flags = [f"--platform={p}" for p in _packaging().platforms(_arch())]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]
    command += ["--target", str(partial), *flags, f"--python-version={version}"]
    install = subprocess.run(
        [*command, "--only-binary=:all:", "awslambdaric>=3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if install.returncode != 0:
        raise Unavailable(f"cannot install awslambdaric for {version}: {install.stderr[-300:]}")
    partial.rename(where)
    return where


def _arch() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Function:
    """One emulated function: a container that stays warm between invocations."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def invoke(self, event: Any, timeout: float = 120) -> Any:
        request = urllib.request.Request(
            self.url + INVOKE, data=json.dumps(event).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines the function wrote (logs and EMF metrics)."""
        out = []
        for line in self.log.read_text().splitlines():
            start = line.find("{")
            if start >= 0:
                try:
                    out.append(json.loads(line[start:]))
                except ValueError:
                    continue
        return out

    def reports(self) -> list[tuple[float | None, float]]:
        """(init ms, duration ms) of each invocation, from the emulator's REPORT lines."""
        found = _REPORT.findall(self.log.read_text())
        return [(float(init) if init else None, float(duration)) for _, init, duration in found]


@contextmanager
def emulated(
    handler: str,
    env: Mapping[str, str],
    log: Path,
    *,
    code: Path | None = None,
    extra_paths: tuple[Path, ...] = (),
    python: str | None = None,
    timeout: int = 30,
) -> Iterator[Function]:
    """Run ``handler`` under the emulator: by default the built package with
    the runtime's Python; ``code``/``python`` override both (the source tree
    under this interpreter, for comparison)."""
    binary = emulator()
    if python is None:
        version, python = runtime()
        paths: tuple[Path, ...] = (code or PACKAGE, interface_client(version), *extra_paths)
        command = [python, "-S", "-m", "awslambdaric", handler]
    else:
        paths = (code or ROOT, *extra_paths)
        command = [python, "-m", "awslambdaric", handler]
    api, rie = free_port(), free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATAMCP_", "PYTHON"))},
        "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
        "LAMBDA_TASK_ROOT": str(paths[0]),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout),
        "AWS_LAMBDA_FUNCTION_NAME": "datamcp-" + handler.split(".")[1],
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        **env,
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *(str(binary), "--log-level", "error"),
                *("--runtime-interface-emulator-address", f"127.0.0.1:{rie}"),
                *("--runtime-api-address", f"127.0.0.1:{api}", *command),
            ],
            cwd=paths[0],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", rie), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(log.read_text()) from None
                    time.sleep(0.05)
            yield Function(f"http://127.0.0.1:{rie}", log)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
