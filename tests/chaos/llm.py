"""The LLM side of the chaos batch: one Messages simulator per worker (so every request the provider
answered is attributed to the worker that sent it), answering an LLM phase with the file its scripted
twin would have written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from tests.chaos.config import LLM_GOAL
from tests.support.simulator import JsonObject, MessagesSimulator, Scripted, exhausted

USAGE = {
    "input_tokens": 900,
    "output_tokens": 40,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
DELAY = 0.3
"""Seconds the simulator thinks: as long as a scripted phase's command, so kills land mid-call too."""
_GOAL = re.compile(rf"{LLM_GOAL} run (\d+) phase (\d+)")


def answer(body: JsonObject) -> Scripted:
    """The whole-file answer `R = "<run>-<phase>"` for the phase the request's goal names."""
    found = _GOAL.search(str(body.get("messages")))
    if found is None:
        return exhausted("not a chaos LLM phase")
    k, i = found.groups()
    return Scripted(text=f'<<<FILE src/p{i}.py\nR = "{k}-{i}"\nFILE>>>\n', usage=USAGE, delay=DELAY)


@dataclass(frozen=True)
class Answered:
    """A request the simulator answered with 200 and wrote to the worker's socket."""

    worker: str
    request_id: str
    run_k: int
    phase: int
    received: float
    sent: float


@contextmanager
def simulators(names: list[str]) -> Iterator[dict[str, MessagesSimulator]]:
    with ExitStack() as stack:
        yield {n: stack.enter_context(MessagesSimulator(answer, id_prefix=f"{n}_")) for n in names}


def answered(sims: dict[str, MessagesSimulator]) -> list[Answered]:
    out = []
    for name, sim in sims.items():
        for r in list(sim.requests):
            found = _GOAL.search(str(r.body.get("messages")))
            if r.request_id in sim.sent and found is not None:
                k, i = map(int, found.groups())
                out.append(Answered(name, r.request_id, k, i, r.at, sim.sent[r.request_id]))
    return out


def intervals(sims: dict[str, MessagesSimulator]) -> list[tuple[int, int, float, float]]:
    """(run k, phase, received, answered-or-now) of every request: calls are executions too."""
    return [(a.run_k, a.phase, a.received, a.sent) for a in answered(sims)]
