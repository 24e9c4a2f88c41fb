"""The shortest end-to-end path: enqueue, a real worker runs it, the result is stored."""

from __future__ import annotations

from qworker import Client


def test_a_job_runs_and_its_result_is_stored(client: Client, spawn_worker) -> None:  # type: ignore[no-untyped-def]
    job_id = client.now("noop", {"x": 1})
    spawn_worker("noop")
    done = client.wait(job_id, timeout=60)
    assert done["state"] == "succeeded"
    assert done["result"] is None
    assert done["attempts"] == 1
    assert done["lastFinishedAt"] >= done["lastRunAt"] >= done["createdAt"]
