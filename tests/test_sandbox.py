"""The sandbox under real attacks: real bwrap, real processes, real git repositories, real Postgres and
Redis. Each attack must fail with a clear reason while other work is unharmed.

Limits here are small (256 MiB memory, 64 processes, 64 MiB files) so a broken limit cannot take the
machine down; the 4 GiB allocation runs only after the 512 MiB one has shown the limit works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.client import ApiClient
from api.sample_repo import sample_spec
from api.serve import free_port
from shared.db import transaction
from shared.errors import GitError
from shared.git import git, resolve_ref
from shared.keys import create_key
from shared.settings import Settings, get_settings
from tests.support.procs import AUTOPACK, api_process, settings_env, worker_process
from tests.support.scenario import wait_terminal
from workers import steps
from workers.celery_app import create_app as create_celery
from workers.commands import CommandResult, configure_sandbox, run_command
from workers.sandbox import Backend, Bwrap, Limits, NoSandbox, SandboxPolicy, gitview
from workers.sandbox import run as run_mod
from workers.sandbox.backends import hand_over
from workers.sandbox.limits import MIB
from workers.sandbox.run import prune_scratch, scratch_root
from workers.validation import run_one
from workers.workspace import WorkspaceManager, Worktree, repo_key

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

LIMITS = Limits(memory_bytes=256 * MIB, processes=64, file_bytes=64 * MIB, open_files=256, cpu_seconds=120)


def box(workspace: Path | None = None, **policy: object) -> Bwrap:
    hidden = (workspace,) if workspace else ()
    fields: dict[str, object] = {"limits": LIMITS, "tmp_bytes": 64 * MIB, "hidden_paths": hidden}
    return Bwrap(SandboxPolicy.model_validate({**fields, **policy}))


def boxed(
    command: str,
    cwd: Path,
    backend: Backend | None = None,
    *,
    timeout: float = 30,
    max_bytes: int = 20_000,
    network: bool = False,
) -> CommandResult:
    return run_command(
        command, cwd, timeout=timeout, max_bytes=max_bytes, network=network, backend=backend or box()
    )


def leftovers(token: str) -> list[str]:
    """Host processes whose command line carries `token` (the host sees every pid namespace)."""
    done = subprocess.run(["pgrep", "-af", token], capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture
def pool(sample_repo: Path, tmp_path: Path) -> Iterator[tuple[Path, Worktree, Worktree]]:
    """Two pooled worktrees of one mirror, as two phases on one host have them."""
    workspace = tmp_path / "workspace"
    manager = WorkspaceManager(workspace, 4)
    sha = resolve_ref(str(sample_repo), "main")
    with ExitStack() as stack:
        first = stack.enter_context(manager.worktree(str(sample_repo), sha))
        second = stack.enter_context(manager.worktree(str(sample_repo), sha))
        yield workspace, first, second


# --- what the box can see -------------------------------------------------------------------------


def test_the_worker_s_proc_and_environment_are_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-probe-secret")
    worker = os.getpid()
    command = (
        f"cat /proc/$PPID/environ /proc/1/environ; cat /proc/{worker}/environ; cat /proc/{worker}/cmdline;"
        " echo; echo PIDS $(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')"
    )
    result = boxed(command, tmp_path)

    assert "sk-ant-probe-secret" not in result.output
    assert f"/proc/{worker}/environ: No such file or directory" in result.output
    pids = {int(p) for p in result.output.split("PIDS", 1)[1].split()}
    assert worker not in pids
    assert max(pids) < 50, f"the box sees host pids: {sorted(pids)}"


def test_hand_over_gives_the_box_uid_the_tree_but_not_its_git_link_nor_what_a_symlink_names(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text("root's")
    wt = tmp_path / "wt"
    (wt / "pkg" / "deep").mkdir(parents=True)
    for rel in (".git", "a.py", "pkg/b.py", "pkg/deep/c.py"):
        (wt / rel).write_text(rel)
    (wt / "pkg" / "link").symlink_to(outside)
    (wt / "pkg" / "dirlink").symlink_to(outside.parent)
    uid = 65534
    hand_over(wt, uid)
    handed = ["", "a.py", "pkg", "pkg/b.py", "pkg/deep", "pkg/deep/c.py", "pkg/link", "pkg/dirlink"]
    assert {rel: os.lstat(wt / rel).st_uid for rel in handed} == dict.fromkeys(handed, uid)
    assert os.lstat(wt / ".git").st_uid == 0 and os.lstat(outside).st_uid == 0
    os.lchown(wt / "pkg" / "deep" / "c.py", 0, 0)  # what a reset rewrote
    hand_over(wt, uid)
    assert os.lstat(wt / "pkg" / "deep" / "c.py").st_uid == uid


def test_a_boxed_command_runs_as_an_unprivileged_uid_and_cannot_read_root_files(tmp_path: Path) -> None:
    result = boxed("id -u; cat /etc/shadow", tmp_path)
    expected = "65534" if os.geteuid() == 0 else str(os.geteuid())
    assert result.output.splitlines()[0] == expected
    assert "Permission denied" in result.output


def test_another_worktree_the_workspace_and_a_dotenv_are_invisible(
    pool: tuple[Path, Worktree, Worktree],
) -> None:
    workspace, mine, other = pool
    (workspace / "secret.env").write_text("AUTOPACK_DATABASE_URL=postgresql://leak\n")
    before = (other.path / "src" / "calc.py").read_text()
    command = (
        f"echo pwned > {other.path}/src/calc.py; cat {workspace}/secret.env; ls {other.path};"
        f" echo SLOTS $(ls {mine.path.parent}); echo PROJECT $(ls -A {Path.cwd()}); echo mine > src/mine.txt"
    )
    result = boxed(command, mine.path, box(workspace))

    assert (other.path / "src" / "calc.py").read_text() == before
    assert f"{other.path}/src/calc.py: No such file or directory" in result.output
    assert "leak" not in result.output
    assert f"SLOTS {mine.path.name}\n" in result.output  # its own slot, no sibling
    # The worker's project directory (its .env, its code) shows only the venv the box runs Python from.
    assert "PROJECT .venv\n" in result.output
    assert (mine.path / "src" / "mine.txt").read_text() == "mine\n"  # its own worktree stays writable


def test_what_the_box_writes_into_the_mirror_config_never_reaches_the_real_mirror(
    pool: tuple[Path, Worktree, Worktree],
) -> None:
    workspace, mine, _ = pool
    config = mine.mirror.path / "config"
    before = config.read_bytes()
    command = (
        "git config core.hooksPath /tmp/hooks && git config remote.origin.url /tmp/evil"
        ' && git config credential.helper "!touch /tmp/x" && git config --get remote.origin.url'
        " && printf 'gitdir: /tmp/evil\\n' > .git"
    )
    result = boxed(command, mine.path, box(workspace))

    assert "/tmp/evil" in result.output  # the box saw its own write ...
    assert "Read-only file system" in result.output  # ... but could not re-point .git
    assert config.read_bytes() == before  # ... and the real mirror never changed
    assert (mine.path / ".git").read_text().startswith(f"gitdir: {mine.mirror.path}")


def test_git_status_diff_and_commit_work_inside_and_leave_the_worker_s_repository_alone(
    pool: tuple[Path, Worktree, Worktree],
) -> None:
    workspace, mine, _ = pool
    head = git("rev-parse", "HEAD", cwd=mine.path).strip()
    (mine.path / "src" / "calc.py").write_text("changed = True\n")
    command = (
        "git status --porcelain && git diff --stat && git add -A"
        " && git -c user.name=x -c user.email=x@y commit -qm boxed && git log --oneline | wc -l"
    )
    result = boxed(command, mine.path, box(workspace))

    assert result.ok, result.output
    assert " M src/calc.py" in result.output
    assert result.output.strip().endswith("2")  # the commit happened, in the throwaway copy
    assert git("rev-parse", "HEAD", cwd=mine.path).strip() == head
    assert steps.worktree_status(mine.path).paths == ["src/calc.py"]
    assert git("cat-file", "-t", "HEAD~0", cwd=mine.path).strip() == "commit"


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
def test_a_git_filter_planted_by_a_command_never_runs_in_the_worker_s_git_add(
    sandbox: str, pool: tuple[Path, Worktree, Worktree], tmp_path: Path
) -> None:
    # With the box, the config lands in a throwaway copy; without it (none), in the real mirror, and
    # the worker's own git calls override every program-naming key a repository sets.
    workspace, mine, _ = pool
    ran = tmp_path / "filter-ran"
    plant = (
        f"git config filter.evil.clean 'touch {ran}; cat' && git config filter.evil.required true"
        f" && git config diff.evil.textconv 'touch {ran}; cat' && git config core.sshCommand 'touch {ran}'"
        " && printf '* filter=evil diff=evil\\n' > .gitattributes && echo 'g = 2' > src/calc.py"
    )
    backend = box(workspace) if sandbox == "bwrap" else NoSandbox(SandboxPolicy())
    assert boxed(plant, mine.path, backend).ok

    steps.stage(mine.path, [".gitattributes", "src/calc.py"])
    diff = git("diff", "--cached", "--no-ext-diff", cwd=mine.path)

    assert not ran.exists(), "the planted filter ran in the worker's git call"
    assert "g = 2" in diff


# --- network --------------------------------------------------------------------------------------

_CONNECT = "for port in 5432 6379; do (exec 3<>/dev/tcp/127.0.0.1/$port) && echo OPEN $port; done;"
_CONNECT += " (exec 3<>/dev/tcp/1.1.1.1/53) && echo OPEN outside; true"


def test_with_network_off_postgres_redis_and_the_outside_are_unreachable(tmp_path: Path) -> None:
    for port in (5432, 6379):  # the services are up: the box, not their absence, stops the connects
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    result = boxed(_CONNECT, tmp_path)

    assert "OPEN" not in result.output
    # The box has a loopback of its own (bwrap brings it up), where nothing listens, and no route out.
    assert "127.0.0.1/5432: Connection refused" in result.output
    assert "127.0.0.1/6379: Connection refused" in result.output
    assert "1.1.1.1/53: Network is unreachable" in result.output


def test_a_phase_asking_for_network_gets_it_only_where_the_operator_allows(tmp_path: Path) -> None:
    denied = boxed(_CONNECT, tmp_path, box(network="deny"), network=True)
    allowed = boxed(_CONNECT, tmp_path, box(network="allow"), network=True)
    not_asked = boxed(_CONNECT, tmp_path, box(network="allow"), network=False)

    assert "OPEN" not in denied.output
    assert "OPEN 6379" in allowed.output
    assert "OPEN" not in not_asked.output


# --- limits ---------------------------------------------------------------------------------------


def test_a_fork_bomb_ends_its_command_while_a_concurrent_command_finishes(tmp_path: Path) -> None:
    (tmp_path / "bomb").mkdir()
    (tmp_path / "calm").mkdir()
    calm: list[CommandResult] = []

    def well_behaved() -> None:
        time.sleep(0.5)  # start while the bomb is at its limit
        command = "for i in $(seq 30); do /bin/true & done; wait; echo calm done"
        calm.append(boxed(command, tmp_path / "calm"))

    neighbour = threading.Thread(target=well_behaved)
    neighbour.start()
    started = time.monotonic()
    bomb = boxed("bomb() { bomb | bomb & }; bomb; sleep 60", tmp_path / "bomb", timeout=40)
    neighbour.join()

    assert bomb.limit == "killed: process limit 64"
    assert not bomb.ok
    assert time.monotonic() - started < 30
    assert calm[0].ok and "calm done" in calm[0].output, calm[0].output
    assert not leftovers("bomb()")


def test_allocating_past_the_memory_limit_fails_with_the_limit_named(tmp_path: Path) -> None:
    result = boxed(f"{sys.executable} -c 'b = bytearray(512 * 2**20)'", tmp_path)

    assert not result.ok
    assert "MemoryError" in result.output
    assert result.limit == "memory limit 256 MiB: an allocation was refused"


def test_allocating_4_gib_fails_the_same_way(tmp_path: Path) -> None:
    result = boxed(f"{sys.executable} -c 'b = bytearray(4 * 2**30)'", tmp_path)

    assert not result.ok
    assert result.limit == "memory limit 256 MiB: an allocation was refused"


def test_writing_a_2_gib_file_is_cut_at_the_file_size_limit(tmp_path: Path) -> None:
    result = boxed("head -c 2G /dev/zero > big.bin", tmp_path)

    assert result.limit == "killed: file size limit 64 MiB"
    assert (tmp_path / "big.bin").stat().st_size <= 64 * MIB


def test_the_private_tmp_is_size_capped_and_gone_afterwards(tmp_path: Path) -> None:
    result = boxed("head -c 100M /dev/zero > /tmp/fill; echo left > /tmp/left", tmp_path)
    again = boxed("ls /tmp", tmp_path)

    assert "No space left on device" in result.output
    assert "left" not in again.output


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_yes_for_30_seconds_keeps_worker_memory_flat_and_says_how_much_was_cut(tmp_path: Path) -> None:
    peak = [_rss_kib()]
    start_rss = peak[0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = boxed("timeout 30 yes", tmp_path, box(output_stop_bytes=0), timeout=60, max_bytes=10_000)
    finally:
        done.set()
        sampler.join()

    cut = int(result.output.split("… [", 1)[1].split(" bytes cut]", 1)[0])
    assert cut > 500 * MIB  # gigabytes went through the pipe ...
    assert result.limit == f"output cut: {cut} bytes dropped"
    assert peak[0] - start_rss < 40_000, (
        f"worker RSS grew by {peak[0] - start_rss} KiB"
    )  # ... not into memory
    assert result.output.startswith("y\ny\n") and result.output.rstrip().endswith("y")


def test_a_runaway_output_is_ended_at_the_output_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    result = boxed("yes", tmp_path, box(output_stop_bytes=64 * MIB), timeout=60)

    assert result.limit is not None and result.limit.startswith("killed: output limit 64 MiB")
    assert time.monotonic() - started < 30


def test_no_descriptor_of_the_worker_reaches_the_box(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "open-in-worker", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(fd, True)
    try:
        result = boxed("ls /proc/self/fd", tmp_path)
    finally:
        os.close(fd)
    assert set(result.output.split()) <= {"0", "1", "2", "3"}  # 3 is ls's own directory


# --- nothing outlives its phase -------------------------------------------------------------------


def test_a_background_daemon_is_dead_when_its_command_returns(tmp_path: Path) -> None:
    command = (
        "setsid nohup sh -c 'sleep 2; echo alive > daemon.txt; sleep 300.4242' >/dev/null 2>&1 & echo started"
    )
    result = boxed(command, tmp_path)

    assert result.ok and "started" in result.output
    time.sleep(3)
    assert not (tmp_path / "daemon.txt").exists()
    assert not leftovers("sleep 300.4242")


def test_sigkill_of_the_worker_mid_command_leaves_no_process_behind(tmp_path: Path) -> None:
    worker = (
        "import sys; from pathlib import Path; from workers.commands import run_command;"
        "run_command(sys.argv[1], Path(sys.argv[2]), timeout=60, max_bytes=1000)"
    )
    command = "echo started > started.txt; (sleep 3; echo alive > orphan.txt) & sleep 301.4242"
    proc = subprocess.Popen([sys.executable, "-c", worker, command, str(tmp_path)], cwd=Path.cwd())
    deadline = time.monotonic() + 20
    while not (tmp_path / "started.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers("sleep 301.4242"), "the command never started"

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(4)

    assert not leftovers("sleep 301.4242")
    assert not (tmp_path / "orphan.txt").exists()


# --- the operator's switch ------------------------------------------------------------------------


def test_sandbox_none_must_be_chosen_explicitly_and_is_logged_and_shown_on_health_and_fleet(
    fleet_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert Settings(_env_file=None).sandbox == "bwrap"  # type: ignore[call-arg]
    unboxed = fleet_settings.model_copy(update={"sandbox": "none"})
    with caplog.at_level(logging.WARNING):
        assert configure_sandbox(unboxed).name == "none"
    try:
        assert "AUTOPACK_SANDBOX=none" in caplog.text and "UNBOXED" in caplog.text
        with TestClient(create_app(unboxed, create_celery(unboxed))) as api:
            health = api.get("/health").json()
        assert health["sandbox"].startswith("none")
    finally:
        configure_sandbox(fleet_settings)
    with TestClient(create_app(fleet_settings, create_celery(fleet_settings))) as api:
        assert api.get("/health").json()["sandbox"] == "bwrap (phase network: deny)"


def test_fleet_view_says_which_sandbox_the_fleet_runs(client: TestClient) -> None:
    assert client.get("/fleet").json()["sandbox"] == "bwrap (phase network: deny)"


@pytest.mark.fleet
def test_a_worker_that_cannot_start_a_box_refuses_to_start_and_names_the_package(
    fleet_settings: Settings, tmp_path: Path
) -> None:
    no_bwrap = tmp_path / "bin"
    no_bwrap.mkdir()
    for tool in ("git", "bash", "sh"):
        (no_bwrap / tool).symlink_to(shutil.which(tool) or tool)
    env = settings_env(fleet_settings, PATH=f"{no_bwrap}:{Path(sys.executable).parent}")
    done = subprocess.run(
        [AUTOPACK, "worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode != 0
    assert "bubblewrap" in done.stderr and "apt-get install bubblewrap" in done.stderr
    assert "ready." not in done.stdout + done.stderr


# --- the same attacks as phases of real runs on a real worker ------------------------------------

ATTACKS = {
    "fork bomb": ("bomb() { bomb | bomb & }; bomb; sleep 60", "killed: process limit 64"),
    "4 GiB": (f"{sys.executable} -c 'b = bytearray(4 * 2**30)'", "memory limit 256 MiB: an allocation"),
    "2 GiB file": ("head -c 2G /dev/zero > src/big.bin", "killed: file size limit 64 MiB"),
    "yes": ("yes", "killed: output limit 64 MiB"),
    # The box's loopback is its own, with nothing listening on it.
    "postgres": ("exec 3<>/dev/tcp/127.0.0.1/5432", "127.0.0.1/5432: Connection refused"),
    "redis": ("exec 3<>/dev/tcp/127.0.0.1/6379", "127.0.0.1/6379: Connection refused"),
    # The box's own processes carry the phase's AUTOPACK_PHASE_NAME/RUN/ATTEMPT; never the worker's secrets.
    "worker environ": ("cat /proc/*/environ | tr '\\0' '\\n' | grep -E '(DATABASE|BROKER)_URL'", "exit 1"),
}


@pytest.mark.fleet
def test_attacks_as_phase_commands_fail_their_runs_naming_the_limit_while_a_neighbour_succeeds(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    settings = fleet_settings.model_copy(
        update={
            "sandbox_memory_mb": 256,
            "sandbox_max_processes": 64,
            "sandbox_max_file_mb": 64,
            "sandbox_output_stop_mb": 64,
            "command_timeout_seconds": 60,
        }
    )
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "sandbox-test", admin=True)
    with (
        api_process(settings, free_port(), tmp_path) as url,
        worker_process(settings, "boxed", tmp_path, concurrency=2),
    ):
        client = ApiClient(url, key)
        calm = client.submit(sample_spec(sample_repo, 0, sys.executable))["id"]
        attacks = {
            name: client.submit(
                {
                    "repo": str(sample_repo),
                    "name": name,
                    "config": {"builder": "script", "max_attempts": 1, "doctor": False},
                    "phases": [{"name": "attack", "scope": ["src/"], "command": command}],
                }
            )["id"]
            for name, (command, _) in ATTACKS.items()
        }
        runs = {r["id"]: r for r in wait_terminal(client, [calm, *attacks.values()], timeout=300)}
        (boxed_worker,) = client.fleet()["workers"]

    assert boxed_worker["sandbox"] == "bwrap (phase network: deny)"  # the worker's own word on /fleet

    assert runs[calm]["state"] == "DONE_SUCCESS", runs[calm]
    for name, run_id in attacks.items():
        run = runs[run_id]
        (attempt,) = run["phases"][0]["attempt_log"]
        assert run["state"] == "DONE_FAILED", name
        assert attempt["outcome"] == "BUILD_FAILED", name
        assert ATTACKS[name][1] in attempt["failure_reason"], (name, attempt["failure_reason"][:500])
        assert "postgresql" not in attempt["failure_reason"]


# --- the worker's own git calls -------------------------------------------------------------------


def test_the_worker_s_git_ignores_a_user_gitconfig_and_keeps_the_operator_s_helpers_over_the_repo_s(
    sample_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / "ran"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[alias]\n\tst = !touch {ran}\n[core]\n\tsshCommand = touch {ran}\n")
    monkeypatch.setenv("HOME", str(home))
    git("config", "credential.helper", f"!touch {ran}", cwd=sample_repo)
    git("config", "core.sshCommand", f"touch {ran}", cwd=sample_repo)

    helpers = git("config", "--get-all", "credential.helper", cwd=sample_repo).splitlines()
    assert helpers[-1] == ""  # the repository's helper is followed by a reset, and nothing after it
    assert git("config", "--get", "core.sshCommand", cwd=sample_repo).strip() == "ssh"
    with pytest.raises(GitError, match="is not a git command"):
        git("st", cwd=sample_repo)  # ~/.gitconfig is not read at all

    operator = tmp_path / "operator.gitconfig"
    operator.write_text("[credential]\n\thelper = cache\n[core]\n\tsshCommand = ssh -oBatchMode=yes\n")
    get_settings.cache_clear()
    monkeypatch.setenv("AUTOPACK_GIT_CONFIG_GLOBAL", str(operator))
    try:
        helpers = git("config", "--get-all", "credential.helper", cwd=sample_repo).splitlines()
        ssh = git("config", "--get-all", "core.sshCommand", cwd=sample_repo).splitlines()
    finally:
        get_settings.cache_clear()
    # Effective values are the last ones: the operator's helper after a reset, the operator's ssh.
    assert helpers[-2:] == ["", "cache"]
    assert ssh[-1] == "ssh -oBatchMode=yes"
    assert not ran.exists()


@pytest.mark.parametrize("trap", ["os.symlink({outside!r}, path)", "os.mkfifo(path)"])
def test_a_junit_report_replaced_by_a_symlink_or_fifo_is_ignored_not_followed_or_waited_on(
    trap: str, tmp_path: Path
) -> None:
    # A file of the worker's that parses as a report: followed, it would show up as test results.
    outside = tmp_path.parent / f"{tmp_path.name}-worker-file.xml"
    outside.write_text('<testsuite><testcase classname="leaked" name="secret"/></testsuite>')
    trap = trap.format(outside=str(outside))
    # The repository's own conftest replaces the report after pytest wrote it.
    (tmp_path / "conftest.py").write_text(
        "import os\n\n\ndef pytest_unconfigure(config):\n"
        f"    path = config.option.xmlpath\n    os.remove(path)\n    {trap}\n"
    )
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    started = time.monotonic()
    result = run_one(
        f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q",
        tmp_path,
        timeout=30,
        max_bytes=10_000,
    )

    assert result.ok, result.output
    assert time.monotonic() - started < 25
    assert result.counts is None  # no report rather than /etc/passwd, and no hang on the FIFO


def test_a_version_manager_shim_on_path_finds_its_manager_inside_the_box(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyenv's shims exec `<root>/libexec/pyenv`: the box must show the tool root, not only shims/.
    root = tmp_path / "tool"
    (root / "shims").mkdir(parents=True)
    (root / "libexec").mkdir()
    (root / "libexec" / "manager").write_text("#!/bin/sh\necho managed\n")
    (root / "shims" / "tool").write_text(f"#!/bin/sh\nexec {root}/libexec/manager\n")
    for script in (root / "libexec" / "manager", root / "shims" / "tool"):
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{root / 'shims'}:{os.environ['PATH']}")
    (tmp_path / "wt").mkdir()

    assert boxed("tool", tmp_path / "wt").output == "managed\n"


def test_the_git_view_survives_refs_packed_away_while_it_is_copied(
    pool: tuple[Path, Worktree, Worktree], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another phase's reconciler packs loose refs (deleting them) while a box's view is being built.
    _, mine, _ = pool
    # The mirror is a bare repo made by init + fetch: its own HEAD names no branch; the slot's does.
    head = git("rev-parse", "HEAD", cwd=mine.path).strip()
    git("update-ref", "refs/heads/feature", head, git_dir=mine.mirror.path)
    real_copy = shutil.copyfile
    packed: list[str] = []

    def packed_meanwhile(src: str, dst: object) -> object:
        if "refs/heads/feature" in str(src):
            os.remove(src)
            packed.append(str(src))
        return real_copy(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "copyfile", packed_meanwhile)
    layout = gitview.find_layout(mine.path)
    assert layout is not None
    view = gitview.build_view(layout, tmp_path / "view")
    assert packed, "the loose ref was never copied: the race was not exercised"
    assert (view / "HEAD").is_file() and not (view / "refs/heads/feature").exists()


def test_a_boxed_command_sees_the_repository_s_branches_but_no_run_s_refs_however_many_there_are(
    pool: tuple[Path, Worktree, Worktree],
) -> None:
    # Other runs' result branches and phase refs are the fleet's, not the phase's: a view that copied
    # them cost every boxed command more as the mirror aged (two views per phase).
    workspace, mine, _ = pool
    mirror = mine.mirror.path
    head = git("rev-parse", "HEAD", cwd=mine.path).strip()
    git("tag", "v1", head, git_dir=mirror)
    git("update-ref", "refs/heads/feature", head, git_dir=mirror)
    updates = "".join(
        f"create refs/heads/autopack/run-{i} {head}\ncreate refs/autopack/run-{i}/phase-0-e1 {head}\n"
        for i in range(300)
    )
    git("update-ref", "--stdin", git_dir=mirror, stdin=updates)
    git("pack-refs", "--all", git_dir=mirror)
    git("update-ref", "refs/heads/autopack/run-loose", head, git_dir=mirror)  # one left loose
    git("update-ref", "refs/autopack/run-loose/phase-0-e1", head, git_dir=mirror)

    result = boxed("git for-each-ref --format='%(refname)'", mine.path, box(workspace))

    assert result.ok, result.output
    refs = set(result.output.split())
    assert {"refs/heads/feature", "refs/heads/main", "refs/tags/v1"} <= refs
    assert not [r for r in refs if "autopack" in r], refs
    assert len(git("for-each-ref", git_dir=mirror).splitlines()) >= 602  # they are there, outside


def test_a_view_shows_refs_packed_since_the_last_view(pool: tuple[Path, Worktree, Worktree]) -> None:
    # The filtered packed-refs is cached by the file's identity; pack-refs renames a new file in.
    workspace, mine, _ = pool
    mirror = mine.mirror.path
    head = git("rev-parse", "HEAD", cwd=mine.path).strip()
    listing = "git for-each-ref --format='%(refname)' refs/tags"
    git("tag", "v1", head, git_dir=mirror)
    git("pack-refs", "--all", git_dir=mirror)
    assert boxed(listing, mine.path, box(workspace)).output.split() == ["refs/tags/v1"]

    git("tag", "v2", head, git_dir=mirror)
    git("pack-refs", "--all", git_dir=mirror)

    assert boxed(listing, mine.path, box(workspace)).output.split() == ["refs/tags/v1", "refs/tags/v2"]


def test_scratch_left_by_a_killed_worker_is_removed_at_the_next_start_and_a_live_one_s_is_kept(
    tmp_path: Path,
) -> None:
    gone = subprocess.Popen(["true"])  # a pid that has exited and been reaped
    gone.wait()
    stale = tmp_path / f"autopack-box-{gone.pid}-abc"
    live = tmp_path / f"autopack-box-{os.getpid()}-def"
    for path in (stale, live):
        (path / "git").mkdir(parents=True)

    assert prune_scratch(tmp_path) == 1
    assert not stale.exists() and live.exists()


def test_a_command_s_git_view_lives_in_the_scratch_root_while_it_runs_and_is_gone_after(
    pool: tuple[Path, Worktree, Worktree],
) -> None:
    workspace, mine, _ = pool
    root = scratch_root()  # /dev/shm where it is a tmpfs with room, as on CI's machines
    seen: list[Path] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not seen:
            views = root.glob(f"autopack-box-{os.getpid()}-*")
            seen.extend(p for p in views if (p / "git" / "HEAD").exists())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert boxed("sleep 1; git rev-parse HEAD", mine.path, box(workspace)).ok
    finally:
        done.set()
        watcher.join()
    assert len(seen) == 1 and not seen[0].exists()


def test_scratch_falls_back_to_the_temp_dir_when_dev_shm_is_small_or_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(run_mod, "SHM_MIN_FREE", 2**62)
    assert scratch_root() == Path(tempfile.gettempdir())
    monkeypatch.setattr(run_mod, "SHM_MIN_FREE", 0)
    monkeypatch.setattr(run_mod, "SHM", tmp_path / "no-such-dir")
    assert scratch_root() == Path(tempfile.gettempdir())


# --- attacks on other runs, the mirror and the worker, as phases on a real worker ----------------


def _phase_run(repo: Path, name: str, command: str, validation: list[str] | None = None) -> dict[str, object]:
    phase = {"name": "attack", "scope": ["src/"], "command": command, "validation": validation or ["true"]}
    config = {"builder": "script", "max_attempts": 1, "doctor": False}
    return {"repo": str(repo), "name": name, "config": config, "phases": [phase]}


def _boxed_descendants(worker_pid: int, argv0: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.Process(worker_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.cmdline()[:1] == [argv0]:
                found.append(proc.pid)
    return found


@pytest.mark.fleet
@pytest.mark.timeout(240)
def test_phases_that_attack_other_runs_the_mirror_and_the_worker_change_nothing_outside_their_box(
    fleet_settings: Settings, sample_repo: Path, tmp_path: Path
) -> None:
    import psutil

    workspace = tmp_path / "workspace"
    settings = fleet_settings.model_copy(update={"workspace_dir": workspace, "max_deliveries": 1})
    pool = workspace / "worktrees" / repo_key(str(sample_repo))
    host_marker = tmp_path / f"pwned-{os.getpid()}"  # where a planted filter would write, on the host
    token = f"autopack-attack-{os.getpid()}"
    attacks = {
        # The other slot of the pool (a neighbour run's worktree), by the path the worker uses: the box
        # shows its own slot at its real path and nothing else of the workspace but a throwaway git view.
        "other worktree": _phase_run(
            sample_repo,
            "other-worktree",
            f"for n in 0 1; do d={pool}/slot-$n; "
            '[ "$d" = "$PWD" ] || echo evil > "$d/src/evil.py" || exit 3; done',
        ),
        # Config, hooks and a filter written through git inside the box land in its throwaway copy.
        "git filter": _phase_run(
            sample_repo,
            "git-filter",
            f"git config filter.pwn.clean 'touch {host_marker}; cat' && git config core.hooksPath /tmp/hooks"
            " && echo '* filter=pwn' > src/.gitattributes && echo 'X = 1' > src/planted.py",
        ),
        # A daemon that would write into the slot after its command returned.
        "daemon": _phase_run(
            sample_repo,
            "daemon",
            "(sleep 2; echo late > src/late.py) & disown; echo 'D = 1' > src/d.py",
            ["sleep 4", "test ! -e src/late.py"],
        ),
    }
    with transaction(settings.database_url) as session:
        _, key = create_key(session, "sandbox-attacks", admin=True)
    with (
        api_process(settings, free_port(), tmp_path) as url,
        worker_process(settings, "boxed", tmp_path, concurrency=2) as worker,
    ):
        client = ApiClient(url, key)
        calm = client.submit(sample_spec(sample_repo, 0, sys.executable))["id"]
        ids = {name: client.submit(spec)["id"] for name, spec in attacks.items()}
        runs = {r["id"]: r for r in wait_terminal(client, [calm, *ids.values()], timeout=180)}
        after = client.submit(sample_spec(sample_repo, 1, sys.executable))["id"]  # the host's git, later
        runs[after] = wait_terminal(client, [after], timeout=120)[0]
        mirror_configs = {p: p.read_text() for p in (workspace / "mirrors").glob("*.git/config")}

        # SIGKILL the prefork child mid-command: its box, and everything in it, must die with it.
        killed = client.submit(_phase_run(sample_repo, "killed", f"exec -a {token} sleep 60"))["id"]
        deadline = time.monotonic() + 60
        while not (boxed := _boxed_descendants(worker.pid, token)):
            assert time.monotonic() < deadline, "the sleeping phase never started"
            time.sleep(0.1)
        child = next(p for p in psutil.Process(boxed[0]).parents() if p.ppid() == worker.pid)
        child.kill()
        time.sleep(2)
        survivors = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[:1] == [token]]
        killed_run = wait_terminal(client, [killed], timeout=60)[0]

    assert runs[calm]["state"] == runs[after]["state"] == "DONE_SUCCESS"
    other = runs[ids["other worktree"]]
    assert other["state"] == "DONE_FAILED"
    assert "No such file or directory" in other["phases"][0]["attempt_log"][0]["failure_reason"]
    assert list(workspace.rglob("evil.py")) == [], "a phase wrote into another run's worktree"
    for run in (runs[calm], runs[after]):
        assert (
            subprocess.run(
                ["git", "-C", str(sample_repo), "ls-tree", "-r", "--name-only", run["result_branch"]],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.count("evil.py")
            == 0
        )
    assert mirror_configs, "the worker made no mirror"
    for config in mirror_configs.values():
        assert "pwn" not in config and "hooksPath" not in config, config
    assert not host_marker.exists(), "a filter planted inside the box ran in the worker's git"
    daemon = runs[ids["daemon"]]
    assert daemon["state"] == "DONE_SUCCESS", daemon["failure_reason"]  # its validation saw no late write
    assert survivors == [], "a boxed process outlived the SIGKILLed worker child"
    assert killed_run["state"] == "DONE_FAILED"
    assert "without finishing" in killed_run["phases"][0]["failure_reason"]


# --- a box that never started is the host's fault ------------------------------------------------


def test_a_box_that_cannot_start_raises_a_host_fault_instead_of_failing_the_command(tmp_path: Path) -> None:
    from shared.errors import HostFault, SandboxFailed

    missing = tmp_path / "report-dir-that-is-gone"  # bwrap cannot bind it: the box is never set up
    with pytest.raises(SandboxFailed) as err:
        run_command("true", tmp_path, timeout=30, max_bytes=4000, writable=[missing], backend=box())
    assert isinstance(err.value, HostFault)
    assert "the sandbox did not start" in str(err.value) and str(missing) in str(err.value)


def test_a_command_that_only_says_bwrap_failed_is_still_its_own_failure(tmp_path: Path) -> None:
    fake = 'echo "bwrap: Can\'t find source path /x: No such file or directory" >&2; exit 1'
    result = boxed(fake, tmp_path)
    assert result.exit_code == 1 and "bwrap: Can't find source path" in result.output
