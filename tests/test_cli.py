"""`autopack status | runs | list | logs` through click's CliRunner (not a terminal: plain text) against
the real API in a thread on Postgres, with phases executed for real by in-process workers; the rich
(terminal) views rendered into a forced-terminal console."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from pydantic import SecretStr
from rich.console import Console

from api import cli, cli_support, run_cli
from api.client import ApiClient
from api.run_view import attempts_display, run_display, runs_table
from api.serve import api_in_thread
from shared.settings import Settings
from tests.support.scenario import wait_terminal
from workers.embedded import embedded_fleet

ESC = "\x1b["


def two_phase_spec(repo: Path) -> dict[str, Any]:
    """Phase 0 commits a file and passes; phase 1 fails its validation on its only attempt."""
    return {
        "repo": str(repo),
        "name": "cli-logs",
        "config": {"builder": "script", "max_attempts": 1},
        "phases": [
            {
                "name": "write-note",
                "scope": ["note.txt"],
                "command": "echo hello-from-phase-0 > note.txt",
                "validation": ["cat note.txt"],
            },
            {
                "name": "break-it",
                "scope": ["other.txt"],
                "command": "echo x > other.txt",
                # Fails only once other.txt exists: a check that already fails on the base is not held
                # against the phase.
                "validation": ["if [ -e other.txt ]; then echo VALIDATION-BOOM-42; exit 3; fi"],
            },
        ],
    }


@pytest.fixture
def api(fleet_settings: Settings, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiClient]:
    """The API in a thread on Postgres, with in-process workers (the in-process broker), and the CLI
    pointed at it with an admin key."""
    settings = fleet_settings.model_copy(update={"broker_url": "memory://"})
    with embedded_fleet(settings, 2) as celery, api_in_thread(settings, celery) as url:
        cli_settings = settings.model_copy(update={"api_url": url, "api_key": SecretStr(api_key)})
        monkeypatch.setattr(cli_support, "get_settings", lambda: cli_settings)
        client = ApiClient(url, api_key)
        yield client
        client.close()


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli.cli, list(args))
    assert ESC not in result.output, "escape codes off a terminal"
    return result


def finished_run(client: ApiClient, sample_repo: Path) -> dict[str, Any]:
    run_id = client.submit(two_phase_spec(sample_repo))["id"]
    (run,) = wait_terminal(client, [run_id], timeout=60)
    assert run["state"] == "DONE_FAILED", run
    return run


def test_submit_of_an_invalid_spec_names_each_bad_field_on_one_line(
    api: ApiClient, sample_repo: Path, tmp_path: Path
) -> None:
    spec = two_phase_spec(sample_repo)
    del spec["phases"][0]["scope"]
    spec["phases"][1]["validation"] = "not a list"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))

    result = invoke("submit", str(path))

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: HTTP 422: "), result.output
    assert "phases.0.scope: Field required" in lines[0]
    assert "phases.1.validation: " in lines[0]
    assert "{'type'" not in lines[0] and "'loc'" not in lines[0]  # not a Python repr of the body


def test_submit_quiet_prints_the_run_id_alone_for_scripts(
    api: ApiClient, sample_repo: Path, tmp_path: Path
) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(two_phase_spec(sample_repo)))

    said = invoke("submit", str(path))
    quiet = invoke("submit", "-q", str(path))

    assert said.exit_code == 0 and quiet.exit_code == 0, (said.output, quiet.output)
    first = int(said.output.split()[1])  # "run N QUEUED at <sha> -> branch autopack/run-N"
    assert quiet.output == f"{first + 1}\n"
    assert api.run(first + 1)["name"] == "cli-logs"


def test_logs_prints_each_attempts_diff_validation_output_and_failure_reason(
    api: ApiClient, sample_repo: Path
) -> None:
    run = finished_run(api, sample_repo)
    result = invoke("logs", str(run["id"]))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "=== phase 0 write-note · attempt 1 · SUCCESS" in out
    assert "+hello-from-phase-0" in out  # the committed diff
    assert "## validation output\nno new failures" in out and "$ cat note.txt" in out
    assert "=== phase 1 break-it · attempt 1 · VALIDATION_FAILED" in out
    assert "VALIDATION-BOOM-42" in out and "## failure reason\nvalidation failed: 1 new failure(s)" in out
    assert out.index("phase 0 write-note") < out.index("phase 1 break-it")

    by_name = invoke("logs", str(run["id"]), "break-it")
    by_index = invoke("logs", str(run["id"]), "1")
    assert by_name.output == by_index.output
    assert "VALIDATION-BOOM-42" in by_name.output and "hello-from-phase-0" not in by_name.output

    unknown = invoke("logs", str(run["id"]), "nope")
    assert unknown.exit_code == 1 and "no phase 'nope' (phases: write-note, break-it)" in unknown.output
    missing = invoke("logs", str(run["id"]), "7")
    assert missing.exit_code == 1 and "404" in missing.output


def test_logs_cuts_long_outputs_to_the_last_lines_and_says_so(api: ApiClient, sample_repo: Path) -> None:
    run = finished_run(api, sample_repo)
    whole = invoke("logs", str(run["id"]), "0", "--lines", "0")
    assert "left out" not in whole.output and "no new failures" in whole.output
    # Phase 0's validation output is 4 lines: a summary, a blank line, the command and what it printed.
    last = invoke("logs", str(run["id"]), "0", "--lines", "1")
    assert "… 3 earlier lines left out (--lines 0 shows all)\nhello-from-phase-0" in last.output
    assert "no new failures" not in last.output
    assert "+hello-from-phase-0" in last.output  # the diff is never cut


def test_status_watch_off_a_terminal_prints_each_change_once_and_the_end(
    api: ApiClient, sample_repo: Path
) -> None:
    run_id = api.submit(two_phase_spec(sample_repo))["id"]
    result = invoke("status", str(run_id), "--watch")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"run {run_id} cli-logs")
    assert lines[-1].startswith(f"run {run_id} ended DONE_FAILED after")
    assert "VALIDATION-BOOM-42" in result.output  # the last failure reason
    phase_lines = [line for line in lines if line.startswith("  [")]
    assert len(phase_lines) == len(set(phase_lines)), "a phase line printed again without a change"
    assert any("[1] break-it" in line and "FAILED" in line for line in phase_lines)

    once = invoke("status", str(run_id))
    assert once.exit_code == 0
    assert "[0] write-note" in once.output and "COMPLETE" in once.output and "attempts 1" in once.output
    raw = invoke("status", str(run_id), "--json", "--watch")  # ended: one JSON document, then done
    assert json.loads(raw.output)["phases"][1]["state"] == "FAILED"


def test_runs_lists_and_filters_by_state_and_campaign_and_list_still_works(
    api: ApiClient, sample_repo: Path, fleet_settings: Settings
) -> None:
    failed = finished_run(api, sample_repo)
    queued = api.submit({**two_phase_spec(sample_repo), "name": "second"})
    api.cancel(queued["id"])
    with sa.create_engine(fleet_settings.database_url, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(sa.text("UPDATE runs SET campaign_id = 7 WHERE id = :id"), {"id": failed["id"]})

    everything = invoke("runs")
    assert everything.exit_code == 0
    assert "cli-logs" in everything.output and "second" in everything.output
    only_failed = invoke("runs", "--state", "DONE_FAILED")
    assert "cli-logs" in only_failed.output and "second" not in only_failed.output
    in_campaign = invoke("runs", "--campaign", "7")
    assert "cli-logs" in in_campaign.output and "second" not in in_campaign.output
    assert "second" not in invoke("runs", "--campaign", "8").output
    alias = invoke("list", "--limit", "1")
    assert alias.exit_code == 0 and "second" in alias.output and "cli-logs" not in alias.output
    assert "list" not in invoke("--help").output.split("Commands:")[1].split()  # hidden alias
    assert invoke("runs", "--state", "BOGUS").exit_code == 2


# --- the terminal views ---------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    return (datetime(2026, 1, 1, 12, 0, tzinfo=UTC) - timedelta(seconds=seconds)).isoformat()


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def fake_run(state: str = "RUNNING") -> dict[str, Any]:
    def phase(i: int, name: str, st: str, attempts: int, **kw: Any) -> dict[str, Any]:
        base = {"started_at": None, "finished_at": None, "commit_sha": None, "failure_reason": None}
        return {"index": i, "name": name, "state": st, "attempts": attempts, "attempt_log": [], **base, **kw}

    return {
        "id": 5,
        "name": "demo",
        "state": state,
        "base_sha": "a" * 40,
        "head_sha": "b" * 40,
        "result_branch": "autopack/run-5",
        "failure_reason": None,
        "started_at": _ago(30),
        "finished_at": None,
        "campaign_id": None,
        "phases": [
            phase(
                0, "scaffold", "COMPLETE", 1, started_at=_ago(30), finished_at=_ago(18), commit_sha="c" * 40
            ),
            phase(
                1,
                "add-tests",
                "EXECUTING",
                2,
                started_at=_ago(17),
                attempt_log=[{"failure_reason": "validation failed: 2 tests failed"}],
            ),
            phase(2, "docs", "QUEUED", 0),
        ],
    }


def render(renderable: Any) -> str:
    console = Console(file=StringIO(), force_terminal=True, width=100, color_system="standard")
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def plain(text: str) -> str:
    from rich.text import Text

    return Text.from_ansi(text).plain


def test_the_live_status_display_shows_each_phase_with_state_attempts_elapsed_and_last_failure() -> None:
    drawn = render(run_display(fake_run(), now=NOW))
    assert ESC in drawn  # coloured: this is the terminal view
    rows = {line.split()[1]: line for line in plain(drawn).splitlines() if line.strip()[:1].isdigit()}
    assert set(rows) == {"scaffold", "add-tests", "docs"}
    assert "COMPLETE" in rows["scaffold"] and "12.0s" in rows["scaffold"] and "cccccccccc" in rows["scaffold"]
    assert "EXECUTING" in rows["add-tests"] and " 2 " in rows["add-tests"] and "17.0s" in rows["add-tests"]
    assert "validation failed: 2 tests failed" in plain(drawn)
    assert "QUEUED" in rows["docs"] and " - " in rows["docs"]
    assert "run 5" in plain(drawn) and "30.0s" in plain(drawn)


def test_the_live_watch_redraws_until_the_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [fake_run(), fake_run(), fake_run("DONE_SUCCESS")]
    frames[-1]["phases"][1]["state"] = "COMPLETE"

    class Client:
        calls = 0

        def run(self, run_id: int) -> dict[str, Any]:
            assert run_id == 5
            frame = frames[min(self.calls, len(frames) - 1)]
            self.calls += 1
            return frame

    console = Console(file=StringIO(), force_terminal=True, width=100)
    monkeypatch.setattr(run_cli, "POLL_SECONDS", 0)
    client = Client()
    run_cli._watch_live(client, 5, console)  # type: ignore[arg-type]
    assert client.calls == 3
    assert "DONE_SUCCESS" in plain(console.file.getvalue())  # type: ignore[attr-defined]


def test_the_terminal_runs_table_and_logs_view_show_their_content() -> None:
    table = plain(render(runs_table([fake_run("DONE_FAILED")])))
    assert "DONE_FAILED" in table and "1/3" in table and "autopack/run-5" in table
    attempt = {
        "phase_index": 1,
        "phase_name": "add-tests",
        "number": 2,
        "outcome": "VALIDATION_FAILED",
        "worker": "w1@host",
        "started_at": _ago(5),
        "finished_at": _ago(1),
        "failure_reason": "validation failed",
        "builder_output": "\n".join(f"line {i}" for i in range(100)),
        "patch": "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n",
        "validation_output": "E   assert 1 == 2",
        "mitigation": None,
        "doctor": {"diagnosis": "off by one", "advice": "start at 0"},
        "model": None,
        "max_tokens": None,
    }
    drawn = plain(render(attempts_display([attempt], lines=10)))
    assert "phase 1 add-tests · attempt 2 · VALIDATION_FAILED · 4.0s" in drawn
    assert "line 99" in drawn and "line 89" not in drawn and "90 earlier lines left out" in drawn
    assert "+new" in drawn and "E   assert 1 == 2" in drawn and "advice: start at 0" in drawn
