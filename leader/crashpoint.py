"""Named points of the leader's multi-step decisions where a test may crash the process.

A decision of several steps (a rollout fails, then its rollback is written) must be
completed by the next leader whatever step the last one died at. The tests prove it by
crashing there: a unit test sets `LeaderLoop.crash_point` to a function that raises at
a chosen point; an integration test starts the daemons with
`SHOAL_TEST_CRASH_POINT=<point>:<marker file>`, and the first daemon to reach `<point>`
creates the marker and kills itself with SIGKILL (a real `kill -9`, at an exact step;
the marker makes it happen once per cluster, not to every leader after it).

Unset (production), `reached` is one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "SHOAL_TEST_CRASH_POINT"

ROLLBACK_DUE = "rollback.due"  # a rollout failed (or was found failed): its rollback not yet written
ROLLBACK_WRITTEN = "rollback.written"  # the rollback's transaction committed, before anything else
JOB_RECORDED = "job.recorded"  # a job's record with a new outcome committed, no task placed yet
SCHEDULE_FIRED = "schedule.fired"  # a tick's run record and job record committed, no task placed yet

log = logging.getLogger(__name__)


def reached(point: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, marker = wanted.partition(":")
    if name != point:
        return
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return  # another daemon crashed here already
    log.critical("crash point %s reached: killing this process (%s)", point, ENV)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)
