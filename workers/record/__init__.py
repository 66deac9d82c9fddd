"""Fenced writes of a phase's progress. Every function proves the lease first, in the same transaction:
`start` begins a delivery, `outcome` ends or advances it, `job` holds what they carry and read.

Writes are idempotent: attempts are unique per (phase, number), state moves are checked, so a task
that runs twice (redelivery, cold shutdown mid-commit) ends with the same rows as one that ran once.

A successful no-op phase costs two transactions of this module if another phase follows it, three if
it is the run's last (it cost seven: acquire, start, a cancel check, success, the branch note, release,
the next phase's claim). Why each merge keeps the fencing contract (a result write commits only while
`runs.lease_epoch` is the writer's, checked in the same transaction):

1. `begin` = acquire + `start`. The grant is `UPDATE runs … SET lease_epoch = lease_epoch + 1 WHERE the
   lease is free RETURNING lease_epoch`: it holds the run row's write lock until this transaction
   commits, so no one can take the lease over between the grant and start's writes, which therefore
   carry the new epoch as surely as a separate `fence` would (that fence would re-check a value the
   same transaction just wrote). A takeover before the grant makes the grant match zero rows and start
   never runs. A delivery with nothing to do (stale, cancelled, out of order) releases in it too.
   When the run branch trails the head (one push per phase, workers/publish.py), one SELECT more
   reads the epoch whose phase ref that phase's push deletes.
2. `succeed`: fence + the attempt + the phase's completion, and when a phase follows, that phase's
   outbox claim + the lease release. Nothing has to happen between the completion and the release
   then: a phase that is not the last moves no branch (its head rides on the next phase's push), so
   the release commits with the completion, fenced by the same transaction's `fence`, and the next
   phase's message is sent after that commit, once the run is free for whoever receives it. The claim
   needs no race: the holder of the live lease is the only one who may dispatch the run's next phase
   (the reconciler skips leased runs). A crash after the commit, before the send, leaves the claim
   to go stale and the reconciler re-dispatches, as after a crash between a claim and its send.
3. The last phase only: `wrap_up` = the branch note + finishing the run + the lease release, all in
   one UPDATE of the run row `WHERE lease_epoch = :mine AND lease_owner = :me` (`Lease.give_up`),
   after the branch move: the run branch may move only after the database names the commit, and the
   run may finish only after the branch moved. A holder taken over since 2 matches zero rows: nothing
   of the note, the finish or the release is written (the reconciler notes lagging branches and
   finishes runs). A crash before 3 commits leaves the lease to expire and the reconciler finishes.

A phase whose change needs a person's approval ends its delivery with `pause`: fence + the approval
(and its webhook outbox row) + the phase's move to AWAITING_APPROVAL + the lease release, in one
transaction, so no holder can pause a phase it lost, and a paused phase never keeps a lease. The
decision that re-queues it is the API's (shared/approvals/store.py); `_start` then hands the decision
to the next holder in `PhaseJob.decision`.

Cancel checks cost no query: the fencing UPDATE returns `cancel_requested` (`Lease.cancel_seen`), and
`start` refuses a cancelled run; see workers/lease.py.
"""

from workers.record.job import AttemptRecord, PhaseJob
from workers.record.outcome import (
    attempt,
    cancel,
    cancel_requested,
    escalate,
    fail,
    hand_back,
    pause,
    phase_metrics,
    skip,
    succeed,
    wrap_up,
)
from workers.record.start import begin, start

__all__ = [
    "AttemptRecord",
    "PhaseJob",
    "attempt",
    "begin",
    "cancel",
    "cancel_requested",
    "escalate",
    "fail",
    "hand_back",
    "pause",
    "phase_metrics",
    "skip",
    "start",
    "succeed",
    "wrap_up",
]
