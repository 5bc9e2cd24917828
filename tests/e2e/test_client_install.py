"""The client distribution in a fresh virtual environment: it installs with only
the gRPC dependencies, packages the stubs from gen/, and its ``datamcp``
command runs the client verbs against a real server without the server
installed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, clean_env, server_process

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
# typing-extensions is grpcio's own dependency.
SDK_DEPENDENCIES = {"grpcio", "protobuf", "googleapis-common-protos", "typing-extensions"}
CLI_DEPENDENCIES = {"rich", "markdown-it-py", "mdurl", "pygments"}
TOOLING = {"pip", "setuptools", "wheel"}


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _installed(python: Path) -> set[str]:
    listed = json.loads(_run(python, "-m", "pip", "list", "--format", "json"))
    return {p["name"].lower().replace("_", "-") for p in listed}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("client-venv")
    _run(sys.executable, "-m", "venv", root / "venv")
    yield root / "venv"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server_process(
        "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path_factory.mktemp("data"))
    ) as srv:
        yield srv


@pytest.mark.timeout(900)
def test_the_sdk_installs_with_grpc_dependencies_only(venv: Path, server: ServerProcess) -> None:
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", CLIENT)
    extra = _installed(python) - TOOLING - SDK_DEPENDENCIES
    assert extra == {"datamcp-client"}, extra
    # The stubs come from gen/ at build time; nothing of the server came along.
    code = (
        "import importlib.util, asyncio, datamcp_client\n"
        "from datamcp.v1 import agents_pb2\n"
        "assert importlib.util.find_spec('datamcp.core') is None\n"
        "async def main():\n"
        f"    async with await datamcp_client.Client.connect('{server.target}') as c:\n"
        "        t = await c.agents.execute('echo', {'n': 1})\n"
        "        print(t.state.name, t.result)\n"
        "asyncio.run(main())\n"
    )
    assert _run(python, "-c", code, cwd=venv).strip() == "SUCCEEDED {'n': 1}"
    # Without the cli extra the command says what to install, no traceback.
    bare = subprocess.run(
        [venv / "bin" / "datamcp", "agent", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert bare.returncode == 2 and "datamcp-client[cli]" in bare.stderr


@pytest.mark.timeout(900)
def test_the_cli_extra_adds_rich_and_the_client_verbs_work(
    venv: Path, server: ServerProcess
) -> None:
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", f"{CLIENT}[cli]")
    extra = _installed(python) - TOOLING - SDK_DEPENDENCIES - {"datamcp-client"}
    assert extra == CLI_DEPENDENCIES, extra
    datamcp = venv / "bin" / "datamcp"
    helped = _run(datamcp, "--help", cwd=venv)
    assert "\n    task " in helped and "\n    serve " not in helped  # serve needs the server
    done = _run(
        datamcp,
        "--address",
        server.target,
        "-o",
        "json",
        "task",
        "exec",
        "echo",
        "--input",
        '{"n": 2}',
        cwd=venv,
    )
    assert json.loads(done)["result"] == {"n": 2}
    # --help imports neither grpc nor protobuf (the figure is in docs/performance.md).
    timing = subprocess.run(
        [
            python,
            "-X",
            "importtime",
            "-c",
            "import sys; from datamcp_client.cli import main; "
            "sys.argv=['datamcp','--help']; main()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    modules = {line.split("|")[-1].strip() for line in timing.stderr.splitlines()}
    assert "grpc" not in modules and "google.protobuf" not in modules
