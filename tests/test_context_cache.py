"""The per-blob statistics cache: a warm selection equals a cold one; a changed file is never stale."""

from __future__ import annotations

import subprocess
from pathlib import Path

from shared.specs import PhaseSpec
from workers.context import ContextSelection, select_context
from workers.context.stats import STATS, BlobStats, blob_id


def _module(name: str, functions: int) -> str:
    body = [f"class {name.title()}Store:\n    pass\n\n"]
    body += [
        f"def {name}_step_{i}(value):\n    return value + {i}  # {name} filler text\n\n"
        for i in range(functions)
    ]
    return "".join(body)


def _repo(root: Path) -> PhaseSpec:
    for name in ("lease", "budget", "ledger", "fence"):
        path = root / "src" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_module(name, 120))
    (root / "src" / "notes.md").write_text("lease budget fence notes\n" * 40)
    return PhaseSpec(name="renew", goal="Make lease_step_7 renew the fence", scope=["src"])


def _shape(selection: ContextSelection) -> tuple[object, ...]:
    partial = [(p.path, p.outline_text, [(r.start, r.end) for r in p.regions]) for p in selection.partial]
    return (selection.files, partial, selection.estimated_tokens_kept, selection.omitted_paths)


def test_blob_id_is_what_git_hash_object_prints(tmp_path: Path) -> None:
    data = "def f():\n    return 'é'\n".encode()
    (tmp_path / "f.py").write_bytes(data)
    expected = subprocess.run(
        ["git", "hash-object", str(tmp_path / "f.py")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert blob_id(data) == expected


def test_a_warm_selection_equals_a_cold_one_and_reads_every_blob_from_the_cache(tmp_path: Path) -> None:
    spec = _repo(tmp_path)
    cache = STATS
    cache.clear()
    cold = select_context(tmp_path, spec, budget_tokens=3000)
    misses = cache.misses
    warm = select_context(tmp_path, spec, budget_tokens=3000)
    assert cold.partial, "the budget must force outline + excerpts, or the cache of regions is untested"
    assert _shape(warm) == _shape(cold)
    assert misses >= 1 and cache.misses == misses, "the warm pass computed word counts again"
    assert cache.hits >= misses


def test_a_changed_file_gets_fresh_statistics(tmp_path: Path) -> None:
    spec = _repo(tmp_path)
    before = select_context(tmp_path, spec, budget_tokens=3000)
    lease = tmp_path / "src" / "lease.py"
    lease.write_text(lease.read_text().replace("lease_step_7", "lease_step_seven"))
    (tmp_path / "src" / "fence.py").write_text(_module("fence", 120) + "def renew_fence_now():\n    pass\n")
    after = select_context(tmp_path, spec, budget_tokens=3000)
    shown = "".join(p.outline_text for p in after.partial)
    fence = next(p for p in after.partial if p.path == "src/fence.py")
    new_function = len(fence.lines) - 1
    assert "lease_step_seven" in shown and "lease_step_7 " not in shown
    assert any(r.start == new_function for r in fence.regions), "the new, most relevant function is excerpted"
    assert _shape(after) != _shape(before)


def test_the_cache_keeps_at_most_its_bound_and_drops_the_least_recently_used() -> None:
    cache = BlobStats(max_blobs=2)
    for text in ("alpha beta", "gamma delta", "alpha beta", "epsilon zeta"):
        cache.terms(blob_id(text.encode()), text)
    assert cache.misses == 3 and cache.hits == 1
    cache.terms(blob_id(b"alpha beta"), "alpha beta")  # kept: used more recently than "gamma delta"
    cache.terms(blob_id(b"gamma delta"), "gamma delta")  # dropped, so computed again
    assert (cache.hits, cache.misses) == (2, 4)
