"""(l)'s history, generated: N ended runs in the origin, the host's mirror and Postgres, in seconds.

Git: one `git fast-import` stream writes N result commits, then their refs go straight into each
repository's packed-refs: `refs/heads/autopack/run-<id>` for every run and, for one run in ten, the
fenced phase ref a taken-over holder leaves. That is the shape the reconciler's packing gives a
long-lived fleet. Writing the refs loose and packing them (what fast-import and `pack-refs --prune`
do) would delete ~11,000 files a repository within a second, and on this machine's ext4, which has
no journal, every inode allocated in the next minute or so first skips the recently deleted ones
(`recently_deleted` in fs/ext4/ialloc.c): a no-op phase measured right after such a burst of
deletions in the refs directories, with no history at all, cost ~1.2x its CPU before, and was back
to ~1.0-1.1x two minutes later (/tmp probe, issue 12's note). That is the burst, not the shape.

Postgres: N ended runs with two phases each, in one `INSERT ... SELECT unnest`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from shared.specs import RunSpec
from workers.workspace import mirror as mirror_mod

SCRATCH_REF = "refs/bench/history"
"""The one ref fast-import moves while it writes the commits; dropped from packed-refs after."""
PACKED_HEADER = "# pack-refs with: peeled fully-peeled sorted \n"


def git_out(*args: str, git_dir: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], input=stdin, capture_output=True, text=True, check=True
    )
    return done.stdout


def fast_import_stream(base_sha: str, ids: range) -> str:
    """One commit per run, each a child of `base_sha`, all written through SCRATCH_REF; identical bytes
    give identical SHAs in every repository it is fed to."""
    out: list[str] = []
    for run_id in ids:
        body = f"run {run_id}\n"
        msg = f"autopack: run {run_id} phase 1 history\n"
        out += [
            f"commit {SCRATCH_REF}",
            f"mark :{run_id}",
            "committer Autopack <autopack@localhost> 1700000000 +0000",
            f"data {len(msg)}",
            msg.rstrip("\n"),
            f"from {base_sha}",
            "M 100644 inline history.txt",
            f"data {len(body)}",
            body,
        ]
    return "\n".join(out) + "\n"


def history_refs(heads: dict[int, str]) -> dict[str, str]:
    """Each run's branch, and a fenced phase ref for one run in ten."""
    refs = {f"refs/heads/autopack/run-{run_id}": sha for run_id, sha in heads.items()}
    refs |= {f"refs/autopack/run-{i}/phase-1-e2": sha for i, sha in heads.items() if i % 10 == 0}
    return refs


def add_git_history(repos: list[Path], base_sha: str, ids: range) -> dict[int, str]:
    """Write the history into every repository in `repos`; returns each run's head."""
    stream = fast_import_stream(base_sha, ids)
    marks = Path(tempfile.mkstemp(prefix="marks-")[1])
    try:
        for repo in repos:
            git_out(
                "fast-import", "--quiet", "--force", f"--export-marks={marks}", git_dir=repo, stdin=stream
            )
        heads = {}
        for line in marks.read_text().splitlines():
            mark, sha = line.split()
            heads[int(mark[1:])] = sha
    finally:
        marks.unlink()
    for repo in repos:
        git_out("pack-refs", "--all", git_dir=repo)  # what was loose before: a few files
        pack_refs(repo, history_refs(heads), drop=SCRATCH_REF)
        mirror_mod.write_commit_graph(repo)  # as the reconciler's packing would have, long before
    return heads


def pack_refs(git_dir: Path, refs: dict[str, str], drop: str) -> None:
    """Merge `refs` (none of them tags) into packed-refs and remove `drop`, under git's own lock
    (packed-refs.lock, then a rename), keeping any peeled line with the ref it follows."""
    path = git_dir / "packed-refs"
    entries: dict[str, list[str]] = {}
    last = ""
    for line in path.read_text().splitlines(keepends=True) if path.exists() else []:
        if line.startswith("#"):
            continue
        if line.startswith("^"):
            entries[last].append(line)
            continue
        last = line.rstrip("\n").split(" ", 1)[1]
        entries[last] = [line]
    entries.pop(drop, None)
    entries |= {ref: [f"{sha} {ref}\n"] for ref, sha in refs.items()}
    lock = path.with_name("packed-refs.lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(PACKED_HEADER)
        for ref in sorted(entries, key=lambda r: r.encode()):
            out.writelines(entries[ref])
    os.replace(lock, path)


def noop_spec(repo: Path, name: str, phases: int = 2) -> RunSpec:
    return RunSpec.model_validate(
        {
            "repo": str(repo),
            "base_ref": "main",
            "name": name,
            "config": {"builder": "script", "max_attempts": 1, "doctor": False},
            "phases": [
                {"name": f"noop-{k}", "scope": ["src/"], "command": "true", "validation": ["true"]}
                for k in range(phases)
            ],
        }
    )


HISTORY_SQL = """
WITH h AS (SELECT * FROM unnest(%(ids)s::bigint[], %(heads)s::text[]) AS h(id, head))
INSERT INTO runs (id, name, repo, base_ref, base_sha, head_sha, branch_sha, spec, spec_hash, config, state,
                  cancel_requested, held, lease_epoch, tokens_spent, tokens_reserved, usd_spent, usd_reserved,
                  created_at, started_at, finished_at)
SELECT id, 'history-' || id, %(repo)s, 'main', %(base)s, head, head, %(spec)s::json, %(hash)s,
       %(config)s::json, 'DONE_SUCCESS', false, false, 1, 0, 0, 0, 0,
       %(now)s - make_interval(secs => (%(last)s - id) * 60 + 30),
       %(now)s - make_interval(secs => (%(last)s - id) * 60 + 29),
       %(now)s - make_interval(secs => (%(last)s - id) * 60 + 20)
FROM h;
INSERT INTO phases (run_id, index, name, spec, state, attempts_used, deliveries, dispatched_at, started_at,
                    finished_at, commit_sha)
SELECT r.id, i, 'p' || i, %(pspec)s::json, 'COMPLETE', 1, 1, r.started_at, r.started_at, r.finished_at,
       CASE WHEN i = 1 THEN r.head_sha ELSE r.base_sha END
FROM runs r CROSS JOIN generate_series(0, 1) AS i
WHERE r.id = ANY(%(ids)s::bigint[]);
SELECT setval(pg_get_serial_sequence('runs', 'id'), (SELECT max(id) FROM runs));
ANALYZE runs;
ANALYZE phases;
"""


def libpq(db_url: str) -> str:
    return db_url.replace("postgresql+psycopg://", "postgresql://")


def add_db_history(db_url: str, repo: Path, base_sha: str, heads: dict[int, str]) -> None:
    spec = noop_spec(repo, "history")
    params = {
        "ids": list(heads),
        "heads": list(heads.values()),
        "repo": str(repo.resolve()),
        "base": base_sha,
        "spec": json.dumps(spec.model_dump(mode="json")),
        "hash": spec.spec_hash(),
        "config": json.dumps(spec.config.model_dump(mode="json")),
        "pspec": json.dumps(spec.phases[0].model_dump(mode="json")),
        "now": datetime.now(UTC) - timedelta(minutes=5),
        "last": max(heads),
    }
    with psycopg.connect(libpq(db_url)) as conn:
        for statement in HISTORY_SQL.split(";"):
            if statement.strip():
                conn.execute(statement, params)  # type: ignore[arg-type]
