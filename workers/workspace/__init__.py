"""Git workspaces on a host: cached bare mirrors (mirror.py), a pool of reusable worktrees (pool.py),
slot repair after a kill (repair.py), and git's lock files (locks.py)."""

from workers.workspace.disk import is_disk_full, reports_disk_full
from workers.workspace.mirror import FETCH_REFSPECS, Mirror, compact_refs, loose_refs, repo_key
from workers.workspace.pool import WorkspaceManager, Worktree

__all__ = [
    "FETCH_REFSPECS",
    "Mirror",
    "WorkspaceManager",
    "Worktree",
    "compact_refs",
    "is_disk_full",
    "loose_refs",
    "repo_key",
    "reports_disk_full",
]
