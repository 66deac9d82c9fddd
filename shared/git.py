"""Thin, typed wrapper over the git CLI. Every failure is a GitError carrying git's own words."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import GitError
from shared.git_native import resolve_local

SHA_RE = re.compile(r"^[0-9a-f]{40}$")

# Never prompt for credentials, never read the system config; the global config is the operator's
# file when set (AUTOPACK_GIT_CONFIG_GLOBAL), else none: a user's ~/.gitconfig is not the fleet's.
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
    "GIT_PAGER": "cat",
}
# Repository config is written by whoever wrote the repository, and with AUTOPACK_SANDBOX=none a
# phase's command can write the mirror's config itself. Programs it names must never run from the
# worker's own git calls (with the worker's secrets): hooks and fsmonitor are off outright; ext::
# remotes, signing and external diffs too.
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
_SAFE += ["-c", "protocol.ext.allow=never", "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false"]
_SAFE += ["-c", "diff.external=", "-c", "core.askPass="]
# A root worker hands each worktree to the sandbox's uid while a command runs (workers/sandbox); git's
# ownership check would then refuse the worker's own worktrees. The worker only runs git on paths it made.
_SAFE += ["-c", "safe.directory=*"]
# Phases on one host update refs of the same mirror concurrently (and the reconciler packs them):
# wait up to a second for a ref lock, as git does for packed-refs, instead of failing after 100 ms.
_SAFE += ["-c", "core.filesRefLockTimeout=1000"]


class ForkGate:
    """Lets no `os.fork()` of this process happen while one of its git children's pipes is open.

    A prefork worker's main process runs git (its reconciler compacts mirrors, under the mirror's
    flock) while the pool forks replacement children without exec. A child forked in that moment
    inherits the write ends of git's stdout/stderr pipes and keeps them open for its whole life, so the
    main process never sees EOF, never returns from the git call and never releases the mirror's lock,
    which that child (and every later one) then waits for: the host's phases hang, leases heartbeating
    (found by the chaos batch). Git calls enter the gate concurrently; a fork waits until none is in
    it, and none enters until the fork is done. Only `os.fork()` runs these hooks; subprocess's own
    fork+exec does not, so git calls never wait for each other."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = 0
        self._forking = False

    @contextmanager
    def pipes(self) -> Iterator[None]:
        with self._cond:
            while self._forking:  # a fork waits for the calls under way: let it go first
                self._cond.wait()
            self._open += 1
        try:
            yield
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()  # held across the fork: no git call starts meanwhile
        self._forking = True
        while self._open:
            self._cond.wait()

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        self._open, self._forking = 0, False  # the child has only the forking thread
        self._cond.release()


FORK_GATE = ForkGate()
os.register_at_fork(
    before=FORK_GATE.before_fork,
    after_in_parent=FORK_GATE.after_fork_in_parent,
    after_in_child=FORK_GATE.after_fork_in_child,
)

SECRET_PREFIXES = ("AUTOPACK_", "ANTHROPIC_", "FLOWER_", "POSTGRES_", "AWS_", "PG")


def scrubbed_env() -> dict[str, str]:
    """The worker's environment without its secrets, for anything that may run repository code."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIXES)}


# Keys whose value is a program (or picks one) and whose name the repository chooses, so no fixed `-c`
# can name them: each one set in repository ("local"/"worktree") scope is overridden per call.
_PROGRAM_KEYS = (
    r"^(filter\..+\.(clean|smudge|process|required)|diff\..+\.(textconv|command)|merge\..+\.driver"
    r"|credential\.(.+\.)?helper|core\.sshcommand)$"
)
_REPO_SCOPES = ("local", "worktree")


def git_env() -> dict[str, str]:
    """The environment of the worker's own git calls: no secrets, no prompts, only the operator's config."""
    from shared.settings import get_settings  # settings import nothing of ours; git is imported early

    global_config = get_settings().git_config_global
    return {**scrubbed_env(), **_ENV, "GIT_CONFIG_GLOBAL": str(global_config or os.devnull)}


def _run(
    cmd: list[str], cwd: Path | None, env: dict[str, str], timeout: float, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """git with its output captured, inside the fork gate (see `ForkGate`)."""
    with FORK_GATE.pipes():
        return subprocess.run(
            cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )


_SCANNED: dict[tuple[str, bytes], list[str]] = {}
"""Overrides by (repository, the bytes of every config file git reads there): a scan is a process."""
_SCANNED_MAX = 256


def _program_overrides(
    base: list[str], cwd: Path | None, git_dir: Path | None, env: dict[str, str]
) -> list[str]:
    """`-c` overrides that disable every program-naming key the repository's config sets (includes
    followed), keeping what the operator's global config sets for credential helpers and ssh.

    The scan is reused while every config file git would read holds the same bytes (each is read
    again per call, ~50 µs); a config with any include is scanned every time, since an included
    file can change without the including one changing."""
    key = _config_key(cwd, git_dir, env)
    if key is not None and key in _SCANNED:
        return _SCANNED[key]
    out = _scan_overrides(base, cwd, env)
    if key is not None:
        if len(_SCANNED) >= _SCANNED_MAX:
            _SCANNED.clear()
        _SCANNED[key] = out
    return out


def _config_key(cwd: Path | None, git_dir: Path | None, env: dict[str, str]) -> tuple[str, bytes] | None:
    gitdir = git_dir or _gitdir_of(cwd)
    if gitdir is None:
        return None
    common = gitdir
    if (gitdir / "commondir").is_file():
        common = gitdir / (gitdir / "commondir").read_text().strip()
    files = [common / "config", common / "config.worktree", gitdir / "config.worktree"]
    files.append(Path(env["GIT_CONFIG_GLOBAL"]))
    contents = b""
    for file in files:
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            data = b"-"
        except OSError:
            return None
        if b"include" in data.lower():
            return None
        contents += str(file).encode() + b"\0" + data + b"\0"
    return str(gitdir.resolve()), contents


def _gitdir_of(cwd: Path | None) -> Path | None:
    """The git dir of a worktree root (`.git` file or directory) or of a bare repository; None when
    `cwd` is anything else (a subdirectory): then no reuse."""
    if cwd is None:
        return None
    dot_git = cwd / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        text = dot_git.read_text()
        return (cwd / text[len("gitdir:") :].strip()) if text.startswith("gitdir:") else None
    return cwd if (cwd / "HEAD").is_file() and (cwd / "objects").is_dir() else None


def _scan_overrides(base: list[str], cwd: Path | None, env: dict[str, str]) -> list[str]:
    done = _run([*base, "config", "--show-scope", "-z", "--get-regexp", _PROGRAM_KEYS], cwd, env, 30)
    fields = done.stdout.split("\0")
    entries = [(fields[i], *fields[i + 1].partition("\n")[::2]) for i in range(0, len(fields) - 1, 2)]
    out: list[str] = []
    operator_helpers = [v for scope, key, v in entries if scope == "global" and key == "credential.helper"]
    operator_ssh = [v for scope, key, v in entries if scope == "global" and key == "core.sshcommand"]
    for key in dict.fromkeys(k for scope, k, _ in entries if scope in _REPO_SCOPES):
        if key.endswith(".required"):
            out += ["-c", f"{key}=false"]
        elif key == "core.sshcommand":  # empty would be run as a command; "ssh" is git's own default
            out += ["-c", f"core.sshCommand={(operator_ssh or ['ssh'])[-1]}"]
        elif key == "credential.helper":  # an empty helper resets the list; then the operator's again
            out += ["-c", "credential.helper="]
            out += [arg for helper in operator_helpers for arg in ("-c", f"credential.helper={helper}")]
        elif key.endswith(".textconv"):  # an empty textconv is run (and fails): convert with cat
            out += ["-c", f"{key}=cat"]
        elif key.endswith(".command"):  # an external diff driver: one that prints nothing
            out += ["-c", f"{key}=true"]
        elif key.endswith(".driver"):  # a merge driver (the worker never merges): always conflicts
            out += ["-c", f"{key}=false"]
        else:  # git runs no clean/smudge/process filter whose command is empty
            out += ["-c", f"{key}="]
    return out


# A remote's `receivepack`/`uploadpack` is a program (run for a local remote with the worker's rights)
# and the first value git reads wins, the repository's before any `-c`: only the command's own option
# overrides it, so the worker's transfers always name git's own.
_TRANSFER_PROGRAM = {
    "push": "--receive-pack=git-receive-pack",
    "fetch": "--upload-pack=git-upload-pack",
    "clone": "--upload-pack=git-upload-pack",
    "ls-remote": "--upload-pack=git-upload-pack",
}


def _with_transfer_program(args: tuple[str, ...]) -> tuple[str, ...]:
    verb = 0
    while verb + 1 < len(args) and args[verb] == "-c":
        verb += 2
    if verb < len(args) and args[verb] in _TRANSFER_PROGRAM:
        return (*args[: verb + 1], _TRANSFER_PROGRAM[args[verb]], *args[verb + 1 :])
    return args


def git(
    *args: str,
    cwd: Path | None = None,
    git_dir: Path | None = None,
    timeout: float = 300,
    stdin: str | None = None,
) -> str:
    base = ["git", *_SAFE]
    if git_dir is not None:
        base += ["--git-dir", str(git_dir)]
    env = git_env()
    args = _with_transfer_program(args)
    try:
        cmd = [*base, *_program_overrides(base, cwd, git_dir, env), *args]
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise GitError(f"cannot read git config: {exc}") from exc
    try:
        done = _run(cmd, cwd, env, timeout, stdin)
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise GitError(f"cannot run git: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise GitError(f"git {' '.join(args[:2])} failed ({done.returncode}): {detail}")
    return done.stdout


def is_local(repo: str) -> bool:
    return "://" not in repo and not re.match(r"^[\w.-]+@[\w.-]+:", repo)


def resolve_ref(repo: str, ref: str) -> str:
    """The commit SHA `ref` names in `repo` (a path or a URL), or GitError saying why not."""
    if is_local(repo):
        path = Path(repo)
        if not path.exists():
            raise GitError(f"repository {repo} does not exist")
        return resolve_local(path, ref)
    if SHA_RE.match(ref):
        return ref
    out = git("ls-remote", "--", repo, ref, f"refs/heads/{ref}", f"refs/tags/{ref}", timeout=60)
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            return sha
    raise GitError(f"ref {ref} not found in {repo}")
