"""The CLI as scripts use it: results alone on stdout, one-line errors with documented exit statuses,
--json/--quiet, folders found from anywhere, no model for tool-only graphs, no torch for client commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from typer.testing import CliRunner

from agentrt import Registry, Runtime, cli
from agentrt.cli import app
from agentrt.lazy_engine import LazyEngine

GRAPHS = Path(__file__).parent / "server_graphs"
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: LazyEngine) -> Any:
        raise AssertionError("a tool-only graph loaded the model")

    monkeypatch.setattr(LazyEngine, "load", refuse)


def run_args(*extra: str) -> list[str]:
    return ["run", "sleepy", "-i", '{"seconds": 0.01, "tag": "t"}', "--graphs", str(GRAPHS), "--tools", str(GRAPHS), *extra]


def test_run_prints_only_the_output_on_stdout_and_the_table_on_stderr(no_model: None) -> None:
    res = invoke(*run_args())
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == "slept 0.01 t"
    assert "tasks" in res.stderr and "nap" in res.stderr and "job job-" in res.stderr
    assert "…" not in res.stderr  # not squeezed into 80 columns when stderr is not a terminal


def test_run_json_is_one_document_and_quiet_prints_nothing_else(no_model: None) -> None:
    res = invoke(*run_args("--json"))
    assert res.exit_code == 0 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert doc["status"] == "succeeded" and doc["output"] == "slept 0.01 t" and doc["usage"]["cpu_seconds"] >= 0
    assert [t["task"] for t in doc["tasks"]] == ["nap"]
    quiet = invoke(*run_args("--quiet"))
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout) == "slept 0.01 t"


def test_a_failed_job_exits_1_and_says_why_on_stderr(no_model: None) -> None:
    res = invoke("run", "fail", "--graphs", str(GRAPHS), "--tools", str(GRAPHS), "--quiet")
    assert res.exit_code == 1 and json.loads(res.stdout) is None
    assert "this graph always fails" in res.stderr


def test_run_ray_flags_reach_the_cluster_and_the_run_shuts_it_down(no_model: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from agentrt.pools import LocalToolExecutor
    from agentrt.ray.cluster import RayCluster

    calls: list[Any] = []

    class Started:  # what from_cli hands back: the cluster's engine and tool executor
        engine = None
        tools = LocalToolExecutor()

        def shutdown(self) -> None:
            calls.append("shutdown")

    def from_cli(*args: Any) -> Started:
        calls.append(args)
        return Started()

    monkeypatch.setattr(RayCluster, "from_cli", staticmethod(from_cli))
    res = invoke(*run_args("--quiet", "--ray", "local", "--prefill-replicas", "1", "--decode-replicas", "2",
                           "--router", "round-robin"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == "slept 0.01 t"
    assert calls == [("local", 1, 1, 2, "round-robin", None), "shutdown"]


@pytest.mark.parametrize("args, says", [
    (["run", "echo", "-i", "{not json"], "--input"),
    (["run", "echo", "-i", "[1, 2]"], "JSON object"),
    (["run", "echo", "--policy", "fifo"], "fifo"),
    (["run", "echo", "--no-such-option"], "--no-such-option"),
    (["status"], "job_id"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    res = invoke(*args[:2], "--graphs", str(GRAPHS), "--tools", str(GRAPHS), *args[2:]) if args[0] == "run" else invoke(*args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentrt: error: ") and says in lines[0]


def test_an_unknown_graph_is_one_line_and_debug_shows_the_traceback(no_model: None) -> None:
    res = invoke("run", "nope", "--graphs", str(GRAPHS), "--tools", str(GRAPHS))
    line = res.stderr.strip()
    assert res.exit_code == 1 and "\n" not in line
    assert line.startswith("agentrt: error: unknown graph 'nope'; registered graphs: ")
    assert all(name in line for name in ("echo, ", "fail, ", "sleepy"))
    debug = invoke("--debug", "run", "nope", "--graphs", str(GRAPHS), "--tools", str(GRAPHS))
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "UnknownGraphError" in debug.stderr


def test_folders_default_to_the_projects_from_elsewhere_or_name_what_was_searched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_folder(None, "graphs") == REPO / "graphs"
    monkeypatch.setattr(cli, "REPO", tmp_path / "project")
    res = invoke("run", "react")
    assert res.exit_code == 2
    assert str(tmp_path / "tools") in res.stderr and str(tmp_path / "project" / "tools") in res.stderr


def test_the_same_folder_for_graphs_and_tools_loads_once() -> None:
    reg = cli.load_registry(GRAPHS, GRAPHS)
    assert {"echo", "sleepy", "fail"} <= set(reg.graphs) and "nap" in reg.tools


def test_client_commands_never_import_torch() -> None:
    script = """
import sys
from typer.testing import CliRunner
from agentrt.cli import app
res = CliRunner().invoke(app, ["status", "job-1", "--timeout", "0.2", "-a", "tcp://127.0.0.1:9"])
assert res.exit_code == 1, res.output
assert res.stderr.startswith("agentrt: error: no answer from a server at tcp://127.0.0.1:9 within 0.2s"), res.stderr
print(sorted(m for m in ("torch", "engine.llm", "engine.model") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from agentrt.server import Server, ServerConfig

    reg = Registry()
    reg.load_path(GRAPHS)
    srv = Server(Runtime(reg), ServerConfig(bind="tcp://127.0.0.1:*", journal=tmp_path_factory.mktemp("j") / "j.sqlite"))
    with start_blocking_portal() as portal:
        future, addr = portal.start_task(srv.serve)
        yield addr
        future.cancel()


def test_submit_wait_exits_with_the_jobs_outcome(address: str) -> None:
    ok = invoke("submit", "echo", "-i", '{"text": "yo"}', "--wait", "-a", address)
    assert ok.exit_code == 0 and json.loads(ok.stdout) == "yo"
    failed = invoke("submit", "fail", "--wait", "-a", address)
    assert failed.exit_code == 1 and failed.stdout == "" and "this graph always fails" in failed.stderr
    doc = invoke("submit", "fail", "--wait", "--json", "-a", address)
    assert doc.exit_code == 1 and json.loads(doc.stdout)["status"] == "failed"
    followed = invoke("submit", "sleepy", "-i", '{"seconds": 0.01}', "--follow", "-a", address)
    assert followed.exit_code == 0 and json.loads(followed.stdout) == "slept 0.01 "
    assert "task_finished nap" in followed.stderr


def test_status_and_cancel_of_jobs_known_and_unknown(address: str) -> None:
    job_id = invoke("submit", "echo", "-a", address).stdout.strip()
    assert job_id and "\n" not in job_id and json.loads(invoke("submit", "echo", "--json", "-a", address).stdout)["job_id"]
    assert invoke("submit", "echo", "--wait", "-a", address).exit_code == 0
    waited = invoke("status", job_id, "-a", address)
    assert waited.exit_code == 0 and waited.stdout.strip() in ("accepted", "running", "succeeded")
    unknown = invoke("status", "job-nope", "-a", address)
    assert unknown.exit_code == 1 and unknown.stderr.startswith("agentrt: error: unknown job 'job-nope'")
    for _ in range(100):  # the job is tiny; wait until the server has journaled it
        if invoke("status", job_id, "-a", address).stdout.strip() == "succeeded":
            break
    cancelled = invoke("cancel", job_id, "--json", "-a", address)
    assert cancelled.exit_code == 0 and json.loads(cancelled.stdout) == {"job_id": job_id, "state": "succeeded"}
    assert invoke("cancel", "job-nope", "-a", address).exit_code == 1


def test_every_environment_variable_the_code_reads_is_documented_in_help_and_readme() -> None:
    names = set()
    for file in [*(REPO / "agentrt").rglob("*.py"), *(REPO / "engine").rglob("*.py")]:
        names |= set(re.findall(r"\b(?:AGENTRT|OTEL)_[A-Z_]*[A-Z]\b", file.read_text()))
    assert {"AGENTRT_MODEL", "OTEL_TRACES_EXPORTER"} <= names
    help_text = " ".join(invoke("--help").stdout.split())
    readme = (REPO / "README.md").read_text()
    assert not sorted(n for n in names if n not in help_text), "missing from agentrt --help"
    assert not sorted(n for n in names if n not in readme), "missing from README.md"


def test_wait_outlasts_the_connect_timeout_but_not_the_wait_timeout(address: str) -> None:
    slow = invoke("submit", "sleepy", "-i", '{"seconds": 1.0}', "--wait", "--timeout", "0.3", "-a", address)
    assert slow.exit_code == 0 and json.loads(slow.stdout) == "slept 1.0 "
    capped = invoke("submit", "sleepy", "-i", '{"seconds": 5.0}', "--wait", "--timeout", "0.3", "--wait-timeout", "0.5", "-a", address)
    assert capped.exit_code == 1 and "--wait-timeout" in capped.stderr and len(capped.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("width", [50, 100, 160])
def test_tables_fit_the_terminal_and_keep_every_value(width: int) -> None:
    import io

    from rich.console import Console

    from agentrt import cli_output

    rows = [{"task": f"a_rather_long_task_name_{i}", "id": f"t{i}", "kind": "llm", "state": "succeeded", "prompt_tokens": 123456,
             "cached_tokens": 65432, "computed_tokens": 58024, "generated_tokens": 789, "device_seconds": 1.234,
             "cpu_seconds": 0.0012, "cost_usd": 0.00012345} for i in range(3)]
    buf = io.StringIO()
    cli_output.table(cli.task_table(rows), Console(file=buf, width=width, force_terminal=True, color_system=None))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text  # cells fold onto more lines; nothing is cut off
    if width == 50:  # too narrow for ten columns: one block of "column value" lines per row, values whole
        for value in ("123456", "65432", "58024", "789", "1.234", "1.23e-04", "a_rather_long_task_name_2"):
            assert value in text


def test_an_interrupted_job_exits_3_with_its_question_and_resume_continues_it(address: str, tmp_path: Path) -> None:
    asked = invoke("submit", "approval", "-i", json.dumps({"log": str(tmp_path / "log")}), "--wait", "--json", "-a", address)
    assert asked.exit_code == 3, asked.output
    doc = json.loads(asked.stdout)
    assert doc["status"] == "interrupted" and doc["interrupt"] == {"question": "go ahead?"}
    done = invoke("resume", doc["job_id"], "--input", '{"approved": true}', "-a", address)
    assert done.exit_code == 0 and json.loads(done.stdout) == {"answer": {"approved": True}}, done.output
    again = invoke("resume", doc["job_id"], "--input", "{}", "-a", address)
    assert again.exit_code == 1 and "not_interrupted" in again.stderr
    assert invoke("resume", "job-nope", "-a", address).exit_code == 1
    assert (tmp_path / "log").read_text().splitlines() == ["prepared", "done"]


def test_follow_writes_streamed_tokens_inline_and_other_events_as_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from agentrt.cli_client import EventPrinter

    printer = EventPrinter()
    for kind, data in [("task_started", {"name": "llm", "task_id": "t1"}), ("llm_token", {"name": "llm", "task_id": "t1", "text": "Hel"}),
                       ("llm_token", {"name": "llm", "task_id": "t1", "text": "lo"}), ("task_finished", {"name": "llm", "task_id": "t1"})]:
        printer(SimpleNamespace(kind=kind, data=data))
    err = capsys.readouterr().err
    assert "llm> Hello\n" in err and err.index("task_started") < err.index("Hello") < err.index("task_finished")
