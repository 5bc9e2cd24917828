"""``make lambda-package``: the Lambda code package, built for the template's
runtime and architecture whatever Python and machine build it.

1. Our wheel (pure Python: the ``datamcp`` package and ``handlers``).
2. It and its dependencies installed into a fresh directory by pip for the
   *target*: ``--python-version`` from the template's ``Runtime``,
   ``--platform`` manylinux tags for its ``Architectures`` (glibc up to 2.34,
   Amazon Linux 2023's), ``--only-binary=:all:``, so compiled libraries
   (greenlet, asyncpg, pydantic-core...) are the ones the runtime can load.
3. Dependencies only the gRPC servers use are left out (``LEFT_OUT``);
   the pipeline engine too (its modules are imported only to run a pipeline);
   ``tests/e2e/test_lambda_rie.py`` imports every module of the package under
   the runtime's Python to prove nothing the handlers reach is missing.
4. Bytecode compiled by a Python of the runtime's version when one is found
   (``LAMBDA_PYTHON``, ``python3.X`` on PATH, pyenv): ``/var/task`` is
   read-only, so without it every cold start compiles what it imports.
   ``unchecked-hash`` .pyc files do not depend on file times, which zips lose.
5. Moved into place (``.build/lambda``, the template's ``CodeUri``) only when
   complete; ``.build/lambda.zip`` and ``.build/lambda.json`` (what was built,
   sizes) beside it.

``sam build`` is not used: it runs pip for the building machine's Python
(or needs Docker for ``--use-container``), which is how a 3.11 machine made a
package the python3.12 runtime could not import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "sam" / "template.yaml"
OUT = ROOT / ".build" / "lambda"
#: Amazon Linux 2023 (python3.12 and later runtimes) has glibc 2.34.
GLIBC = (2, 34)
#: Required by the package but never imported by the handlers or what they
#: reach: the gRPC server stack (grpc, protobuf and their instrumentation),
#: the command line's terminal output (rich), and the batch pipeline engine
#: (DuckDB, Arrow, SQLite's ADBC driver: 257 MiB, more than the 250 MiB a
#: zip function may unpack to): the functions parse and store pipelines but
#: do not run them (``PIPELINE_ENGINE_MISSING``; docs/serverless.md).
LEFT_OUT = frozenset(
    {
        "rich",
        "duckdb",
        "adbc-driver-sqlite",
        "adbc-driver-manager",
        "pyarrow",
        "grpcio",
        "grpcio-health-checking",
        "grpcio-reflection",
        "grpcio-status",
        "protobuf",
        "googleapis-common-protos",
        "opentelemetry-instrumentation-grpc",
        "opentelemetry-exporter-otlp-proto-grpc",
    }
)


def target() -> tuple[str, str]:
    """(Python version, architecture) of the template's functions."""
    text = TEMPLATE.read_text()
    runtime = _value(text, "Runtime:")
    arch = _value(text, "Architectures:").strip("[] ")
    if not runtime.startswith("python") or arch not in ("x86_64", "arm64"):
        raise SystemExit(f"unexpected Runtime {runtime!r} / Architectures {arch!r} in {TEMPLATE}")
    return runtime.removeprefix("python"), arch


def _value(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(key):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"{TEMPLATE}: no {key}")


def platforms(arch: str) -> list[str]:
    machine = "x86_64" if arch == "x86_64" else "aarch64"
    tags = [f"manylinux_{GLIBC[0]}_{minor}_{machine}" for minor in range(GLIBC[1], 16, -1)]
    return [*tags, f"manylinux2014_{machine}"]


def runtime_python(version: str) -> str | None:
    """An interpreter of the runtime's version, to compile bytecode with."""
    candidates = [os.environ.get("LAMBDA_PYTHON", ""), shutil.which(f"python{version}") or ""]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def requirements(wheel: Path) -> list[str]:
    """Our wheel's dependencies, less what only the servers use."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        spec = line.split(":", 1)[1].strip()
        if "extra ==" in spec:
            continue
        name = spec.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        if name.lower() not in LEFT_OUT:
            out.append(spec)
    return out


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def build() -> dict[str, Any]:
    version, arch = target()
    staging = Path(tempfile.mkdtemp(prefix="lambda-", dir=OUT.parent))
    try:
        wheels = staging / "wheels"
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT))
        (wheel,) = wheels.glob("datamcp-*.whl")
        package = staging / "package"
        constraints = staging / "requirements.txt"
        constraints.write_text("\n".join(requirements(wheel)) + "\n")
        flags = [f"--platform={p}" for p in platforms(arch)]
        flags += [f"--python-version={version}", "--implementation=cp", "--only-binary=:all:"]
        common = ["install", "--quiet", "--no-compile", *flags]
        pip(*common, "--target", str(package), "--requirement", str(constraints))
        ours = staging / "ours"
        pip(*common, "--target", str(ours), "--no-deps", str(wheel))
        for entry in ours.iterdir():
            if entry.name != "bin":  # console scripts for the build host
                entry.rename(package / entry.name)
        shutil.rmtree(package / "bin", ignore_errors=True)
        compiled_with = runtime_python(version)
        if compiled_with:
            compile_all = [compiled_with, "-m", "compileall", "-q", "-j", "0"]
            subprocess.run(
                [*compile_all, "--invalidation-mode", "unchecked-hash", str(package)], check=True
            )
        else:
            print(
                f"warning: no Python {version} found (set LAMBDA_PYTHON): the package has no "
                "bytecode, so every cold start compiles what it imports",
                file=sys.stderr,
            )
        if OUT.exists():
            shutil.rmtree(OUT)
        package.rename(OUT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive = OUT.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(OUT.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(OUT))
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    report = {
        "runtime": f"python{version}",
        "architecture": arch,
        "platforms": platforms(arch),
        "bytecode_compiled_with": compiled_with,
        "left_out": sorted(LEFT_OUT),
        "files": sum(1 for p in OUT.rglob("*") if p.is_file()),
        "unzipped_bytes": size,
        "zipped_bytes": archive.stat().st_size,
    }
    OUT.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    report = build()
    mib = 1024 * 1024
    print(
        f"{OUT.relative_to(ROOT)}: {report['runtime']} {report['architecture']}, "
        f"{report['files']} files, {report['unzipped_bytes'] / mib:.1f} MiB "
        f"({report['zipped_bytes'] / mib:.1f} MiB zipped; Lambda allows 250 MiB unzipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
