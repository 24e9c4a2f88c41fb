"""worker:notification messages carry exactly the job attributes their metadata selects."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from support.jobs import messages
from support.processes import leading
from support.waits import wait_for

from qworker import Client
from qworker.channel import MAX_MESSAGE_BYTES, oversized
from qworker.notifications import notification, pick


def test_pick_takes_dotted_paths_and_leaves_out_missing_ones() -> None:
    doc = {"data": {"to": "a@b", "cc": "c@d"}, "state": "queued", "nested": {"a": {"b": 1}}}
    assert pick(doc, ["data.to", "state", "nested.a.b", "absent", "data.absent", "state.x"]) == {
        "data": {"to": "a@b"},
        "state": "queued",
        "nested": {"a": {"b": 1}},
    }


def notes(db: Any, job_id: str) -> list[dict[str, Any]]:
    return [n for n in messages(db, "worker:notification") if n["sourceId"] == job_id]


def test_each_event_carries_the_attributes_its_metadata_selects(
    client: Client, db: Any, spawn_worker: Any, spawn_manager: Any
) -> None:
    leading(spawn_manager())
    spawn_worker("notify", worker_id="nw", standalone=False)
    ok = client.now("notify", {"to": "ops@example.com", "secret": "x"})
    bad = client.now("notify", {"to": "dev@example.com", "fail": True})
    for job_id in (ok, bad):
        client.wait(job_id, timeout=60)
    wait_for(lambda: {"success"} <= {n["type"] for n in notes(db, ok)}, 30, "the success note")
    wait_for(lambda: {"fail"} <= {n["type"] for n in notes(db, bad)}, 30, "the fail note")

    by_type = {n["type"]: n for n in notes(db, ok)}
    assert notes(db, ok)[0]["type"] == "start"
    assert set(by_type) == {"start", "progress", "log:info", "success"}
    for note in by_type.values():
        assert note["workerId"] == "nw" and note["sourceType"] == "job" and note["task"] == "notify"
        assert note["triggeredAt"] is not None
    # jobAttributes for start, progress and log; its own list for success.
    assert by_type["start"]["job"] == {"data": {"to": "ops@example.com"}}
    assert by_type["progress"]["job"] == {"data": {"to": "ops@example.com"}}
    assert (by_type["progress"]["percent"], by_type["progress"]["step"]) == (50.0, "half")
    assert by_type["log:info"]["message"] == "writing to ops@example.com"
    success = by_type["success"]["job"]
    assert set(success) == {"data", "lastFinishedAt", "result"}
    assert success["data"] == {"to": "ops@example.com"}
    assert success["result"] == {"sent": True}

    fail = {n["type"]: n for n in notes(db, bad)}["fail"]
    assert fail["job"] == {
        "data": {"to": "dev@example.com", "fail": True},
        "failReason": "ValueError: asked to fail",
        "failCount": 1,
    }
    assert fail["error"] == {"type": "ValueError", "message": "asked to fail"}
    assert fail["retry"] is False


def test_a_standalone_worker_publishes_no_notifications(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    spawn_worker("notify")
    job_id = client.now("notify", {"to": "a@b"})
    assert client.wait(job_id, timeout=60)["state"] == "succeeded"
    # Its log line is still stored on the job; no manager, so nothing is announced.
    assert [entry["msg"] for entry in client.get(job_id)["logs"]] == ["writing to a@b"]
    assert db.channel.count_documents({"event": "worker:notification"}) == 0


def test_attributes_too_big_for_the_channel_are_left_out_and_said_so() -> None:
    job = {"_id": ObjectId(), "name": "t", "data": {"blob": "x" * MAX_MESSAGE_BYTES, "to": "a"}}
    note = notification("w1", job, "success", ["data.blob"])
    assert not oversized(note)
    assert note["message"]["job"] == {} and "bytes" in note["message"]["jobOmitted"]
    small = notification("w1", job, "success", ["data.to"])
    assert small["message"]["job"] == {"data": {"to": "a"}} and "jobOmitted" not in small["message"]
