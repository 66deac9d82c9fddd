"""What an `autopack worker` process imports before Celery forks its pool: everything a phase needs
(so prefork children share those pages) and nothing of the API server or the campaign statistics."""

from __future__ import annotations

import json
import subprocess
import sys

NEVER_IN_A_WORKER = ("fastapi", "starlette", "uvicorn", "numpy", "scipy", "matplotlib", "jinja2")
BEFORE_FORK = ("workers.executor", "workers.attempt", "anthropic", "psycopg")

PROBE = """
import json, sys
from api import cli  # the `autopack` entry point
from shared.settings import Settings
from workers.celery_app import create_app
settings = Settings(database_url="postgresql+psycopg://u@127.0.0.1/x", broker_url="redis://127.0.0.1:6379/0",
                    _env_file=None)
create_app(settings)  # what run_worker does before app.worker_main forks the pool
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} | set(sys.modules))))
"""


def test_a_worker_imports_what_phases_need_before_fork_and_no_api_server() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    modules = set(json.loads(out))
    assert not [m for m in NEVER_IN_A_WORKER if m in modules]
    assert [m for m in BEFORE_FORK if m not in modules] == []
