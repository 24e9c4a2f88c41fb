"""The leader's retention of workflows: a workflow's jobs go together, when the last kept is due.

A workflow's nodes get no ``expireAt`` of their own (a dependent may read a
dependency's result long after it finished): each keeps its due time as
``flow.keepUntil``. The workflow's document says when to look again
(``checkAt``): then, if every node has ended and the longest-kept one is
due, the nodes and the document are deleted; otherwise it is looked at
again when that node is due, or in an hour while some node is still active.
Then, too, a waiting node whose dependency ended without counting down in it
(a crash between a cancel, a deletion or a deadline and its count-down, which
outside a worker's run are two writes) gets that end written again.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection

from qworker import fanin
from qworker.model import ACTIVE_STATES
from qworker.when import utcnow
from qworker.workflows import node_range

Doc = dict[str, Any]
log = structlog.get_logger("qworker.manager")

# Workflows looked at per sweep, and how often a sweep runs.
SWEEP_BATCH = 100
SWEEP_EVERY = 60.0
# A workflow still running is looked at again this much later.
ACTIVE_AGAIN = timedelta(hours=1)
# A node kept for ever (retention says so) keeps its workflow: looked at weekly.
FOREVER_AGAIN = timedelta(days=7)
ACTIVE = [s.value for s in ACTIVE_STATES]
NODE_FIELDS = {"state": 1, "name": 1, "failReason": 1, "flow": 1, "expireAt": 1}


class WorkflowSweep:
    def __init__(self, jobs: AsyncCollection[Doc], workflows: AsyncCollection[Doc]) -> None:
        self.jobs, self.workflows = jobs, workflows
        self._next = 0.0  # monotonic

    async def sweep(self) -> int:
        """Delete the workflows that are due (at most ``SWEEP_BATCH``); how many."""
        if time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + SWEEP_EVERY
        now = utcnow()
        due = await self.workflows.find({"checkAt": {"$lte": now}}).limit(SWEEP_BATCH).to_list()
        deleted = 0
        for workflow in due:
            deleted += await self._check(workflow, now)
        return deleted

    async def _check(self, workflow: Doc, now: datetime) -> int:
        nodes = {"_id": node_range(workflow["_id"])}
        found = await self.jobs.find(nodes, NODE_FIELDS).to_list()
        until = _kept_until(found, now)
        if until > now:
            await self._settle(workflow, found, now)
            await self.workflows.update_one({"_id": workflow["_id"]}, {"$set": {"checkAt": until}})
            return 0
        await self.jobs.delete_many(nodes)
        await self.workflows.delete_one({"_id": workflow["_id"]})
        log.info("workflow deleted", workflow_id=str(workflow["_id"]), nodes=len(found))
        return 1

    async def _settle(self, workflow: Doc, found: list[Doc], now: datetime) -> None:
        """Write the ends a crash kept from reaching the nodes waiting for them."""
        writes = fanin.unsettled(found, now)
        if writes:
            await self.jobs.bulk_write(writes, ordered=True)
            log.warning(
                "workflow nodes waited for ends that had not reached them: written again",
                workflow_id=str(workflow["_id"]),
                writes=len(writes),
            )


def _kept_until(nodes: list[Doc], now: datetime) -> datetime:
    """When the workflow may go: when its longest-kept node is due, or later."""
    if any(node.get("state") in ACTIVE for node in nodes):
        return now + ACTIVE_AGAIN
    until = now - timedelta(seconds=1)
    for node in nodes:
        due = (node.get("flow") or {}).get("keepUntil") or node.get("expireAt")
        if due is None:
            return now + FOREVER_AGAIN
        until = max(until, due)
    return until
