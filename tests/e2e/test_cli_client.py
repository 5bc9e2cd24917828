"""The ``datamcp`` client verbs as a user runs them: a real server process and
the real command, its output, its exit codes, Ctrl-C and closed pipes."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, clean_env, datamcp_command, server_process

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("cli")
    roots = json.dumps([str(data / "files"), str(QUICKSTART / "data")])
    with server_process(
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data),
        env={"DATAMCP_PIPELINES_DATA_ROOTS": roots},
    ) as srv:
        yield srv


def cli(
    server: ServerProcess,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        datamcp_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({"DATAMCP_ADDRESS": server.target, **(env or {})}),
        check=False,
    )


def test_task_exec_prints_the_task_and_exits_by_its_state(server: ServerProcess) -> None:
    done = cli(server, "task", "exec", "echo", "--input", '{"a": 1, "b": 2.5}', "-o", "json")
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert task["state"] == "SUCCEEDED" and task["result"] == {"a": 1, "b": 2.5}
    table = cli(server, "task", "exec", "echo", "--input", "[1]")
    assert table.returncode == 0 and "SUCCEEDED" in table.stdout


def test_exit_codes_say_what_happened(server: ServerProcess, tmp_path: Path) -> None:
    refused = cli(server, "task", "exec", "no.such.capability")
    assert refused.returncode == 2
    assert "task.capability:" in refused.stderr and "Traceback" not in refused.stderr
    assert cli(server, "task", "get", "00000000-0000-0000-0000-000000000000").returncode == 3
    bad_json = cli(server, "task", "exec", "echo", "--input", "{nope")
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr
    missing = cli(server, "task", "exec", "echo", "--input", f"@{tmp_path / 'none.json'}")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert cli(server, "task", "list", "--state", "bogus").returncode == 2
    down = cli(server, "--address", "127.0.0.1:9", "agent", "list")
    assert down.returncode == 6 and "UNAVAILABLE" in down.stderr
    assert cli(server, "memory", "get", "ns", "nothing").returncode == 3


def test_input_from_a_file_and_stdin_and_the_address_from_datamcp_listen(
    server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "in.json").write_text('{"from": "file"}')
    from_file = cli(
        server, "-o", "json", "task", "exec", "echo", "--input", f"@{tmp_path / 'in.json'}"
    )
    assert json.loads(from_file.stdout)["result"] == {"from": "file"}
    from_stdin = cli(server, "task", "exec", "echo", "-i", "-", "-o", "json", stdin='"piped"')
    assert json.loads(from_stdin.stdout)["result"] == "piped"
    listen_env = clean_env({"DATAMCP_LISTEN": f"0.0.0.0:{server.port}"})
    via_listen = subprocess.run(
        datamcp_command("health"),
        capture_output=True,
        text=True,
        timeout=60,
        env=listen_env,
        check=False,
    )
    assert via_listen.returncode == 0, via_listen.stderr


def test_submit_quiet_then_watch_and_cancel(server: ServerProcess) -> None:
    task_id = cli(server, "task", "submit", "echo", "-i", "7", "-q").stdout.strip()
    watched = cli(server, "task", "watch", task_id, "-o", "json")
    assert watched.returncode == 0
    assert json.loads(watched.stdout.splitlines()[-1])["result"] == 7
    assert cli(server, "task", "cancel", task_id).returncode == 4  # already ended


def test_events_publish_batch_replay_and_tail_until_ctrl_c(server: ServerProcess) -> None:
    lines = "\n".join(json.dumps({"type": "cli.demo", "data": {"n": n}}) for n in range(3))
    batch = cli(server, "events", "publish", "--batch", "-", stdin=lines, env={})
    assert batch.returncode == 0, batch.stderr
    tail = subprocess.Popen(
        datamcp_command("events", "tail", "--type", "cli.*", "--from-start", "-o", "json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"DATAMCP_ADDRESS": server.target}),
    )
    assert tail.stdout is not None
    got = [json.loads(tail.stdout.readline())["data"]["n"] for _ in range(3)]
    assert got == [0, 1, 2]
    tail.send_signal(signal.SIGINT)
    _, err = tail.communicate(timeout=30)
    assert tail.returncode == 130 and "Traceback" not in err
    # The throwaway subscription was deleted on the way out.
    subs = json.loads(cli(server, "events", "subscriptions", "-o", "json").stdout)
    assert not [s for s in subs if s["name"].startswith("tail-")]
    replay = cli(server, "events", "replay", "--type", "cli.demo", "-o", "json")
    assert [json.loads(x)["data"]["n"] for x in replay.stdout.splitlines()] == [0, 1, 2]


def test_a_closed_pipe_is_not_an_error(server: ServerProcess) -> None:
    for _ in range(3):
        cli(server, "events", "publish", "pipe.demo", "-d", "1")
    done = subprocess.run(
        f"{' '.join(datamcp_command('events', 'replay'))} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({"DATAMCP_ADDRESS": server.target}),
        check=False,
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_pipeline_validate_create_run_follow_and_a_failing_run(server: ServerProcess) -> None:
    spec = str(QUICKSTART / "paid-orders.yaml")
    assert cli(server, "pipeline", "validate", spec).returncode == 0
    bad = cli(server, "pipeline", "validate", "-", stdin="name: x\nsource: {csv: {path: a.csv}}\n")
    assert bad.returncode == 1 and "destination" in bad.stdout
    assert cli(server, "pipeline", "create", spec).returncode == 0
    assert cli(server, "pipeline", "create", spec).returncode == 4  # already exists
    assert cli(server, "pipeline", "create", spec, "--replace", "paid-orders").returncode == 0
    run = cli(server, "pipeline", "run", "paid-orders", "--follow", "-p", "min_amount=10")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCEEDED" in run.stdout and "written 3" in run.stdout
    gone = (
        (QUICKSTART / "paid-orders.yaml")
        .read_text()
        .replace("name: paid-orders", "name: gone")
        .replace("orders.csv", "missing.csv")
    )
    assert cli(server, "pipeline", "create", "-", stdin=gone).returncode == 0
    failed = cli(server, "pipeline", "run", "gone", "--follow", "-o", "json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout.splitlines()[-1])["state"] == "FAILED"


def test_memory_put_get_history_and_a_sync_with_one_store_is_refused(
    server: ServerProcess,
) -> None:
    assert cli(server, "memory", "put", "a/b", "k", '{"v": 1}', "--tag", "t").returncode == 0
    assert cli(server, "memory", "put", "a/b", "k", '{"v": 2}').returncode == 0
    got = json.loads(cli(server, "memory", "get", "a/b", "k", "-o", "json").stdout)
    assert got["value"] == {"v": 2}
    history = json.loads(cli(server, "memory", "history", "a/b", "k", "-o", "json").stdout)
    assert [h["value"]["v"] for h in history][:2] == [2, 1]
    stale = cli(server, "memory", "put", "a/b", "k", "3", "--expected-version", "0@nope")
    assert stale.returncode == 4
    one_store = cli(server, "memory", "sync", "--follow")
    assert one_store.returncode == 2 and "at least two stores" in one_store.stderr


def test_help_is_plain_and_lists_every_verb() -> None:
    done = subprocess.run(
        datamcp_command("--help"), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    for verb in ("agent", "task", "events", "pipeline", "memory", "health", "serve", "db"):
        assert verb in done.stdout
    assert "``" not in done.stdout
    validate = subprocess.run(
        datamcp_command("pipeline", "validate", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "--listen" not in validate.stdout and "--address" in validate.stdout
