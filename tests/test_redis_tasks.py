"""The Redis task mirror against real redis-server processes, on asyncio and trio."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import coredis
import pytest
from coredis.tokens import PureToken

from bgtasks._redis.task_scripts import CLAIM_REAP
from bgtasks._redis.tasks import (
    BackendUnavailableError,
    CancelRequest,
    FieldValue,
    TaskMirror,
)
from bgtasks.exceptions import BgTasksError
from redis_server import RedisServer

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _client(server: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    client = coredis.Redis(port=server.port, decode_responses=True)
    async with client:
        yield client


def _create(mirror: TaskMirror, tid: str, created: float | None = None) -> None:
    fields: dict[str, FieldValue] = {
        "name": "job",
        "created": created or time.time(),
        "state": "pending",
    }
    mirror.push(tid, fields, terminal=False)


def _finish(mirror: TaskMirror, tid: str, finished: float | None = None) -> None:
    fields: dict[str, FieldValue] = {
        "state": "succeeded",
        "finished": finished or time.time(),
    }
    mirror.push(tid, fields, terminal=True)


async def _calls(client: coredis.Redis[str], command: str) -> int:
    stats = await client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


async def test_push_flush_get_round_trip(private_redis: RedisServer) -> None:
    """Pushed fields come back as text, None as "", and a final record gets its TTL."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t", finished_ttl=60)
        _create(mirror, "a", created=1000.5)
        mirror.push(
            "a",
            {"state": "running", "attempt": 2, "next_attempt_at": None, "flag": True},
            terminal=False,
        )
        await mirror.flush()
        got = await mirror.get("a")
        assert got is not None
        assert {k: got[k] for k in ("name", "created", "state", "attempt")} == {
            "name": "job",
            "created": "1000.5",
            "state": "running",
            "attempt": "2",
        }
        assert (got["next_attempt_at"], got["flag"]) == ("", "1")
        assert got["worker"] == mirror.worker_id
        assert await client.pttl("t:task:{a}") > 60_000  # active: the safety TTL
        _finish(mirror, "a")
        await mirror.flush()
        got = await mirror.get("a")
        assert got is not None
        assert got["state"] == "succeeded"
        assert 0 < await client.pttl("t:task:{a}") <= 60_000
        assert await mirror.get("nope") is None


async def test_progress_pushes_coalesce_into_one_write(
    private_redis: RedisServer,
) -> None:
    """100 progress pushes before a flush cost one task write and one EVALSHA."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t")
        _create(mirror, "a")
        await mirror.flush()
        writes, evals = mirror.task_writes, await _calls(client, "evalsha")
        for i in range(100):
            mirror.push("a", {"progress": i / 100}, terminal=False, progress_only=True)
        await mirror.flush()
        sent = (mirror.task_writes - writes, await _calls(client, "evalsha") - evals)
        assert sent == (1, 1)
        got = await mirror.get("a")
        assert got is not None
        assert got["progress"] == "0.99"


async def test_progress_waits_but_a_state_change_flushes_at_once(
    private_redis: RedisServer,
) -> None:
    """The loop lets progress wait its period; a state change flushes it at once."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t", progress_interval=30)
        async with anyio.create_task_group() as tg:
            await tg.start(mirror.run)
            _create(mirror, "a")
            with anyio.fail_after(5):
                while await mirror.get("a") is None:
                    await anyio.sleep(0.005)
            mirror.push("a", {"progress": 0.5}, terminal=False, progress_only=True)
            await anyio.sleep(0.05)
            got = await mirror.get("a")
            assert got is not None
            assert "progress" not in got
            mirror.push("a", {"state": "running"}, terminal=False)
            with anyio.fail_after(5):
                while (got := await mirror.get("a")) and got["state"] != "running":
                    await anyio.sleep(0.005)
            assert got is not None
            assert got["progress"] == "0.5"
            tg.cancel_scope.cancel()


async def test_list_pages_newest_first_while_tasks_come_and_go(
    private_redis: RedisServer,
) -> None:
    """Cursor paging neither repeats nor skips, with ties, new tasks and trimming."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t", max_finished=3)
        base = 1_700_000_000.0
        ids = [f"t{i:02}" for i in range(25)]
        for i, tid in enumerate(ids):
            # t10..t14 share one millisecond: ties are ordered by id.
            _create(mirror, tid, created=base + (10 if 10 <= i < 15 else i) * 0.001)
        await mirror.flush()
        page, cursor = await mirror.list(limit=6)
        seen = _ids_of(page)
        # Meanwhile: newer tasks arrive, and the oldest finished ones are trimmed.
        for i in range(5):
            _create(mirror, f"new{i}", created=base + 1)
        for tid in ids[:5]:
            _finish(mirror, tid)
        await mirror.flush()
        trimmed = {tid for tid in ids[:5] if await mirror.get(tid) is None}
        assert trimmed == {"t00", "t01"}
        while cursor is not None:
            page, cursor = await mirror.list(limit=6, cursor=cursor)
            seen += _ids_of(page)
        assert seen == [tid for tid in reversed(ids) if tid not in trimmed]
        finished, _ = await mirror.list(state="succeeded", limit=10)
        assert _ids_of(finished) == ["t04", "t03", "t02"]
        newest, _ = await mirror.list(limit=2)
        assert _ids_of(newest) == ["new4", "new3"]


def _ids_of(page: list[dict[str, str]]) -> list[str]:
    return [row["id"] for row in page]


async def test_cancel_reaches_the_owner_by_pub_sub(private_redis: RedisServer) -> None:
    """B asks to cancel A's task: A hears it at once on its control channel."""
    cancelled = anyio.Event()
    heard: list[str] = []

    def on_cancel(task_id: str) -> None:
        heard.append(task_id)
        cancelled.set()

    async with _client(private_redis) as client_a, _client(private_redis) as client_b:
        # A lease of 60 s: no heartbeat (the durable path) during the test.
        a = TaskMirror(client_a, prefix="t", lease=60, on_cancel=on_cancel)
        b = TaskMirror(client_b, prefix="t", lease=60)
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            _create(a, "job-1")
            await a.flush()
            with anyio.fail_after(5):
                while await _calls(client_b, "subscribe") == 0:
                    await anyio.sleep(0.005)
                assert await b.request_cancel("job-1") == CancelRequest(
                    "requested", a.worker_id
                )
                await cancelled.wait()
            assert heard == ["job-1"]
            got = await b.get("job-1")
            assert got is not None
            assert got["cancel_requested"] == "1"
            tg.cancel_scope.cancel()
        assert await b.request_cancel("nope") == CancelRequest("unknown", None)
        _finish(a, "job-1")
        await a.flush()
        assert await b.request_cancel("job-1") == CancelRequest("finished", None)


async def test_cancel_survives_a_lost_message_through_the_heartbeat(
    private_redis: RedisServer,
) -> None:
    """With nobody subscribed, the cancel waits in A's set until A's next heartbeat."""
    heard: list[str] = []
    async with _client(private_redis) as client:
        a = TaskMirror(client, prefix="t", on_cancel=heard.append)
        b = TaskMirror(client, prefix="t")
        await a.heartbeat()
        worker = await client.hgetall(f"t:worker:{{{a.worker_id}}}")
        assert (worker["host"], worker["pid"]) == (
            socket.gethostname(),
            str(os.getpid()),
        )
        _create(a, "job-1")
        await a.flush()
        assert (await b.request_cancel("job-1")).outcome == "requested"
        assert heard == []  # A's loop is not running: the PUBLISH reached no one
        await a.heartbeat()
        assert heard == ["job-1"]
        await a.heartbeat()
        assert heard == ["job-1"]  # taken once


async def _reap_setup(
    client: coredis.Redis[str], lease: float
) -> tuple[TaskMirror, TaskMirror, TaskMirror, list[list[str]]]:
    """A owns three active tasks and one finished; B and C are live workers.

    A's lease is short; B and C hold long ones (so a slow machine never makes
    them look dead) and judge others without a grace period.
    """
    fenced: list[list[str]] = []
    a = TaskMirror(
        client, prefix="t", lease=lease, on_fenced=lambda ids: fenced.append(list(ids))
    )
    b = TaskMirror(client, prefix="t", lease=60, reap_grace=0)
    c = TaskMirror(client, prefix="t", lease=60, reap_grace=0)
    await a.heartbeat()
    for tid in ("a1", "a2", "a3", "done"):
        _create(a, tid)
    _finish(a, "done")
    await a.flush()
    await b.heartbeat()
    await c.heartbeat()
    return a, b, c, fenced


async def test_a_dead_workers_tasks_are_interrupted_exactly_once(
    private_redis: RedisServer,
) -> None:
    """Two reapers race on a worker whose lease lapsed: one wins, tasks end once."""
    lease = 0.1
    async with _client(private_redis) as client:
        a, b, c, _ = await _reap_setup(client, lease)
        # A's lease still runs (renewed just before, so a slow setup cannot
        # have let it lapse already).
        await a.heartbeat()
        await b.heartbeat()
        assert await b.reap() == []
        await anyio.sleep(lease * 1.5)  # A stopped heartbeating: it looks paused
        await b.heartbeat()  # B's idea of the server's time
        fresh = TaskMirror(client, prefix="t", lease=60)
        await fresh.heartbeat()
        assert await fresh.reap() == []  # in contact for less than its grace
        results: dict[str, list[str]] = {}

        async def reap(name: str, mirror: TaskMirror) -> None:
            results[name] = await mirror.reap()

        async with anyio.create_task_group() as tg:
            tg.start_soon(reap, "b", b)
            tg.start_soon(reap, "c", c)
        assert sorted(results.values()) == [[], [a.worker_id]]
        for tid in ("a1", "a2", "a3"):
            got = await b.get(tid)
            assert got is not None
            assert (got["state"], got["reason"]) == ("interrupted", "worker lost")
        done = await b.get("done")
        assert done is not None
        assert done["state"] == "succeeded"
        assert await client.zscore("t:workers", a.worker_id) is None
        assert await b.reap() == []
        assert await c.reap() == []
        interrupted, _ = await b.list(state="interrupted")
        assert sorted(row["id"] for row in interrupted) == ["a1", "a2", "a3"]


async def test_a_fenced_worker_is_rejected_and_told(
    private_redis: RedisServer, records: list[logging.LogRecord]
) -> None:
    """A paused past its lease returns: writes bounce, on_fenced fires, new id."""
    lease = 0.1
    async with _client(private_redis) as client:
        a, b, _, fenced = await _reap_setup(client, lease)
        old = a.worker_id
        await anyio.sleep(lease * 1.5)
        await b.heartbeat()
        assert await b.reap() == [old]
        # A resumes: a late write for a reaped task, and a task started meanwhile.
        _finish(a, "a1")
        _create(a, "late")
        await a.flush()
        got = await b.get("a1")
        assert got is not None
        assert got["state"] == "interrupted"
        assert fenced == []
        await a.heartbeat()
        assert fenced == [["a1", "a2", "a3"]]
        assert a.worker_id != old
        late = await b.get("late")
        assert late is not None
        assert late["worker"] == a.worker_id  # re-owned under the new id
        assert await client.sismember(f"t:worker:{{{a.worker_id}}}:tasks", "late")
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert any(f"worker {old} was declared dead" in m for m in warnings)
        # Its new tasks are mirrored as usual, and its old writes stay rejected.
        _finish(a, "late")
        a.push("a2", {"progress": 1.0}, terminal=False)
        await a.flush()
        late = await b.get("late")
        a2 = await b.get("a2")
        assert late is not None
        assert a2 is not None
        assert (late["state"], a2["state"], a2.get("progress")) == (
            "succeeded",
            "interrupted",
            None,
        )


async def test_redis_down_then_back(
    private_redis: RedisServer, records: list[logging.LogRecord]
) -> None:
    """Reads fail fast and clearly, the loop rides the outage out, writes resume."""
    timeout = 0.3
    async with _client(private_redis) as client:
        mirror = TaskMirror(
            client,
            prefix="t",
            timeout=timeout,
            heartbeat_interval=0.02,
            max_backoff=0.02,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(mirror.run)
            private_redis.stop()
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError) as caught:
                await mirror.get("a")
            # Bounded by the timeout (generously: a loaded machine is slow), not
            # by the operating system's connection timeout.
            assert time.monotonic() - started < timeout + 1.5
            assert isinstance(caught.value, BgTasksError)
            _create(mirror, "a")

            def lost() -> int:
                return sum("lost Redis" in r.getMessage() for r in records)

            with anyio.fail_after(5):
                while not lost():
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)  # several more failed heartbeats and flushes
            assert lost() == 1  # said once per outage
            private_redis.restart()
            with anyio.fail_after(5):
                while True:
                    with contextlib.suppress(BackendUnavailableError):
                        if await mirror.get("a") is not None:
                            break
                    await anyio.sleep(0.01)
                # The write is visible a moment before its writer, resumed
                # after the read, says contact is back.
                while not any("reached Redis again" in r.getMessage() for r in records):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()


async def test_trimming_bounds_what_redis_keeps(private_redis: RedisServer) -> None:
    """Indexes stay within max_finished, final records expire, old ones are dropped."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t", max_finished=5, finished_ttl=60)
        for i in range(12):
            _create(mirror, f"f{i}")
            _finish(mirror, f"f{i}", finished=time.time() + i)
        _create(mirror, "active")
        _create(mirror, "old")
        _finish(mirror, "old", finished=time.time() - 120)  # older than finished_ttl
        await mirror.flush()
        assert await client.zcard("{t}:finished") == 5
        assert await client.zcard("{t}:index") == 6  # the 5 kept, and "active"
        assert [await mirror.get(f"f{i}") is None for i in range(12)] == [True] * 7 + [
            False
        ] * 5
        assert await mirror.get("old") is None
        for i in range(7, 12):
            assert 0 < await client.pttl(f"t:task:{{f{i}}}") <= 60_000


async def test_readers_drop_index_entries_of_expired_records(
    private_redis: RedisServer,
) -> None:
    """An index entry whose hash expired is skipped, then forgotten."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t")
        _create(mirror, "gone")
        _create(mirror, "here")
        await mirror.flush()
        await client.delete(["t:task:{gone}"])
        page, cursor = await mirror.list(limit=10)
        assert ([row["id"] for row in page], cursor) == (["here"], None)
        assert await client.zscore("{t}:index", "gone") is None


async def test_close_unregisters_only_a_worker_with_nothing_left(
    private_redis: RedisServer,
) -> None:
    """A clean close forgets the worker; one with unfinished tasks lets its lease go."""
    async with _client(private_redis) as client:
        clean = TaskMirror(client, prefix="t")
        busy = TaskMirror(client, prefix="t")
        for mirror, tid in ((clean, "c"), (busy, "b")):
            await mirror.heartbeat()
            _create(mirror, tid)
        _finish(clean, "c")
        await clean.close()
        await busy.close()
        assert await client.zscore("t:workers", clean.worker_id) is None
        assert not await client.exists([f"t:worker:{{{clean.worker_id}}}"])
        assert await client.zscore("t:workers", busy.worker_id) is not None
        got = await busy.get("b")
        assert got is not None  # flushed at close
        assert got["state"] == "pending"


def test_the_buffer_is_bounded_and_keeps_final_updates(
    records: list[logging.LogRecord],
) -> None:
    """Past max_pending the oldest unfinished updates go first, with one WARNING."""
    mirror = TaskMirror(coredis.Redis(decode_responses=True), max_pending=10)
    for i in range(5):
        _create(mirror, f"final{i}")
        _finish(mirror, f"final{i}")
    for i in range(20):
        _create(mirror, f"open{i}")
    pending = mirror._dirty
    assert len(pending) <= 10
    assert {f"final{i}" for i in range(5)} <= set(pending)
    assert "open19" in pending
    warned = [r for r in records if "dropping the oldest" in r.getMessage()]
    assert len(warned) == 1
    # A task whose creating update was dropped is not mirrored at all.
    mirror.push("open0", {"state": "running"}, terminal=False)
    assert "open0" not in mirror._dirty
    for i in range(5, 30):  # only final updates: the oldest of them go
        fields: dict[str, FieldValue] = {"name": "job", "state": "succeeded"}
        mirror.push(f"final{i}", fields, terminal=True)
    assert len(mirror._dirty) <= 10
    assert "final29" in mirror._dirty
    assert "final0" not in mirror._dirty


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("lease", 0, ValueError),
        ("lease", "10", TypeError),
        ("finished_ttl", -1, ValueError),
        ("max_finished", 0, ValueError),
        ("max_pending", 1.5, ValueError),
        ("prefix", "", ValueError),
    ],
)
def test_bad_options_fail_at_construction(
    option: str, value: object, error: type[Exception]
) -> None:
    """Each bad option fails when the mirror is made, naming the option."""
    with pytest.raises(error, match=option):
        TaskMirror(coredis.Redis(decode_responses=True), **{option: value})  # type: ignore[arg-type]


async def test_a_reaper_that_stalls_is_taken_over(private_redis: RedisServer) -> None:
    """A reaper that claimed a dead worker and vanished loses its lock to the next."""
    lease = 0.1
    async with _client(private_redis) as client:
        a, b, _, _ = await _reap_setup(client, lease)
        await anyio.sleep(lease * 1.5)
        keys = [f"t:worker:{{{a.worker_id}}}{part}" for part in ("", ":fenced")]
        keys += [f"t:worker:{{{a.worker_id}}}{part}" for part in (":tasks", ":reaping")]
        # A reaper claims A, then dies before interrupting anything.
        await client.script_load(CLAIM_REAP.source)
        claim = await client.evalsha(CLAIM_REAP.sha, keys, ["gone-reaper", 100, 60_000])
        assert isinstance(claim, list)
        assert claim[0] == "reap"
        await b.heartbeat()
        assert await b.reap() == []  # its lock still holds
        await anyio.sleep(0.12)
        assert await b.reap() == [a.worker_id]
        got = await b.get("a1")
        assert got is not None
        assert got["state"] == "interrupted"


async def test_a_retried_final_write_is_no_fence(private_redis: RedisServer) -> None:
    """Resending a final write whose reply was lost counts as written, not fenced."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t")
        _create(mirror, "a")
        _finish(mirror, "a")
        entry = mirror._dirty["a"]
        await mirror.flush()
        mirror._dirty["a"] = entry  # as if the reply had been lost
        await mirror.flush()
        assert mirror._rejected == set()
        assert await client.zscore("{t}:finished", "a") is not None


async def test_a_reused_id_is_a_new_submission(
    private_redis: RedisServer, records: list[logging.LogRecord]
) -> None:
    """A finished id may run again; an id active on another worker is not taken."""
    async with _client(private_redis) as client:
        a = TaskMirror(client, prefix="t")
        b = TaskMirror(client, prefix="t")
        _create(a, "x")
        _finish(a, "x")
        await a.flush()
        _create(a, "x")
        await a.flush()
        got = await a.get("x")
        assert got is not None
        assert (got["state"], got.get("finished")) == ("pending", None)
        _create(b, "x")
        await b.flush()
        got = await a.get("x")
        assert got is not None
        assert got["worker"] == a.worker_id
        assert any("active on another worker" in r.getMessage() for r in records)


async def test_a_fenced_worker_moves_to_its_new_channel(
    private_redis: RedisServer,
) -> None:
    """Once fenced, a running worker listens on its new channel and owns its tasks."""
    fenced = anyio.Event()
    cancelled = anyio.Event()
    async with _client(private_redis) as client:
        a = TaskMirror(
            client,
            prefix="t",
            lease=60,
            heartbeat_interval=0.02,
            on_fenced=lambda ids: fenced.set(),
            on_cancel=lambda tid: cancelled.set(),
        )
        b = TaskMirror(client, prefix="t")
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            _create(a, "t1")
            await a.flush()
            old = a.worker_id
            await client.set(f"t:worker:{{{old}}}:fenced", "x")  # as a reaper does
            with anyio.fail_after(5):
                await fenced.wait()
                new = a.worker_id
                while f"t:ctl:{new}" not in await client.pubsub_channels():
                    await anyio.sleep(0.005)
            assert new != old
            assert f"t:ctl:{old}" not in await client.pubsub_channels()
            assert await b.request_cancel("t1") == CancelRequest("requested", new)
            with anyio.fail_after(5):
                await cancelled.wait()
            tg.cancel_scope.cancel()


async def test_a_filtered_list_examines_a_bounded_number_of_entries(
    private_redis: RedisServer,
) -> None:
    """A rare state costs a bounded scan per page; the cursor goes on from there."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t")
        base = 1_700_000_000.0
        for i in range(300):
            _create(mirror, f"t{i:03}", created=base + i)
        mirror.push("t000", {"state": "failed", "finished": time.time()}, terminal=True)
        await mirror.flush()
        page, cursor = await mirror.list(state="failed", limit=1)
        assert page == []
        assert cursor == ((base + 44) * 1000, "t044")  # 256 newest examined
        page, cursor = await mirror.list(state="failed", limit=1, cursor=cursor)
        assert [row["id"] for row in page] == ["t000"]


async def test_close_lets_a_write_in_flight_finish(private_redis: RedisServer) -> None:
    """Closing during a write waits for it: every task is sent to Redis once.

    Cancelled instead, the write was put back and sent again whole at close,
    though Redis had it already: a burst's last write cost twice.
    """
    async with _client(private_redis) as client, _client(private_redis) as admin:
        mirror = TaskMirror(client, prefix="t", timeout=10)
        before = await _calls(client, "hmget")  # the write script reads each task once
        ends: list[str] = []
        write = mirror._write

        async def watched(batch: dict[str, Any]) -> None:
            try:
                await write(batch)
            except BaseException as exc:
                ends.append(type(exc).__name__)
                raise
            ends.append("written")

        mirror._write = watched  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            await tg.start(mirror.run)
            await admin.client_pause(10_000, PureToken.WRITE)  # scripts wait
            for i in range(50):
                _create(mirror, f"w{i}")
                _finish(mirror, f"w{i}")
            while not mirror._flush_lock.locked():  # the loop took the batch
                await anyio.sleep(0.001)
            closing = anyio.Event()

            async def close() -> None:
                await mirror.close()
                closing.set()

            tg.start_soon(close)
            await anyio.sleep(0.01)  # close() now waits for the write
            assert not closing.is_set()
            await admin.client_unpause()
            await closing.wait()
        assert ends == ["written"]
        assert await _calls(client, "hmget") - before == 50
        assert await client.zcard("{t}:finished") == 50


async def test_a_paused_redis_times_out_then_answers_in_order(
    private_redis: RedisServer,
) -> None:
    """Against a SIGSTOPped server reads give up at the timeout; later replies match."""
    timeout = 0.2
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t", timeout=timeout)
        _create(mirror, "a")
        await mirror.flush()
        private_redis.pause()
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            await mirror.get("a")
        assert timeout <= time.monotonic() - started < timeout + 0.2
        _create(mirror, "b")
        with pytest.raises(BackendUnavailableError):
            await mirror.flush()
        private_redis.resume()
        await mirror.flush()  # the update that timed out was kept
        got = await mirror.get("b")
        assert got is not None
        assert got["id"] == "b"
        page, _ = await mirror.list()
        assert [row["id"] for row in page] == ["b", "a"]


async def test_progress_is_written_while_state_changes_never_stop(
    private_redis: RedisServer,
) -> None:
    """A flush kept busy by other tasks' state changes still writes progress."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t", progress_interval=0.05)
        async with anyio.create_task_group() as tg:
            await tg.start(mirror.run)
            _create(mirror, "a")
            await mirror.flush()
            mirror.push("a", {"progress": 0.25}, terminal=False, progress_only=True)
            with anyio.fail_after(3):  # the loop wrote progress: the next must wait
                while (got := await mirror.get("a")) is None or "progress" not in got:
                    await anyio.sleep(0.005)

            async def busy() -> None:  # more than the flusher can write
                for i in range(0, 1_000_000, 50):
                    for j in range(i, i + 50):
                        _create(mirror, f"busy{j}")
                    await anyio.sleep(0)

            tg.start_soon(busy)
            mirror.push("a", {"progress": 0.5}, terminal=False, progress_only=True)
            with anyio.fail_after(3):
                while (got := await mirror.get("a")) and got["progress"] != "0.5":
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()


async def test_a_record_redis_lost_is_written_whole_again(
    private_redis: RedisServer,
) -> None:
    """After the data is gone, an update (or the next heartbeat) re-creates the task."""
    async with _client(private_redis) as client:
        mirror = TaskMirror(client, prefix="t")
        await mirror.heartbeat()
        _create(mirror, "a")
        _create(mirror, "b")
        mirror.push("a", {"state": "running", "started": 5.0}, terminal=False)
        await mirror.flush()
        await client.flushall()  # what a restart without persistence leaves
        mirror.push("a", {"progress": 0.5}, terminal=False, progress_only=True)
        await mirror.flush()  # finds no record: queues the whole one
        await mirror.flush()
        a = await mirror.get("a")
        assert a is not None
        assert (a["name"], a["state"], a["started"], a["progress"]) == (
            "job",
            "running",
            "5.0",
            "0.5",
        )
        assert await mirror.get("b") is None  # no update yet
        await mirror.heartbeat()  # its registration is gone: every task again
        await mirror.flush()
        b = await mirror.get("b")
        assert b is not None
        assert (b["state"], b["name"]) == ("pending", "job")
        assert await client.zscore("t:workers", mirror.worker_id) is not None
        assert [row["id"] for row in (await mirror.list())[0]] == ["b", "a"]
        await client.flushall()
        _finish(mirror, "a")  # a final update of a lost record: written whole
        await mirror.flush()
        await mirror.flush()
        a = await mirror.get("a")
        assert a is not None
        assert (a["state"], a["name"]) == ("succeeded", "job")
        assert await client.zscore("{t}:finished", "a") is not None


async def test_stats_count_every_worker_and_time_the_runs(
    private_redis: RedisServer,
) -> None:
    """Finished sets per state, run times by rank, and each worker's active counts."""
    async with _client(private_redis) as client:
        one = TaskMirror(client, prefix="t", max_finished=4)
        two = TaskMirror(client, prefix="t", max_finished=4)
        for mirror in (one, two):
            await mirror.heartbeat()
        _create(one, "p")
        _create(two, "r")
        two.push("r", {"state": "running"}, terminal=False)
        start = time.time() - 100
        for i, took in enumerate([1.0, 2.0, 3.0, 4.0, 50.0]):
            _create(one, f"f{i}")
            one.push(f"f{i}", {"started": start + i}, terminal=False)
            fields: dict[str, FieldValue] = {
                "state": "failed" if i == 0 else "succeeded",
                "finished": start + took + i,  # in this order
            }
            one.push(f"f{i}", fields, terminal=True)
            await one.flush()
        await two.flush()
        stats = await one.stats()
        # f0 (the oldest) was trimmed past max_finished: out of every index.
        assert stats == {
            "counts": {
                "pending": 1,
                "running": 1,
                "cancelled": 0,
                "failed": 0,
                "interrupted": 0,
                "succeeded": 4,
            },
            "p50": 3.0,
            "p95": 50.0,
        }
        await one.close()  # active tasks left: stays registered and counted
        _finish(two, "r")
        await two.flush()
        counts = (await two.stats())["counts"]
        # r finished: the oldest success left, as max_finished says.
        assert (counts["running"], counts["pending"], counts["succeeded"]) == (0, 1, 4)


async def test_changes_are_published_only_while_watched(
    private_redis: RedisServer,
) -> None:
    """No reader: no stream at all. A reader sees other workers' writes, not its own."""
    async with _client(private_redis) as client:
        writer = TaskMirror(client, prefix="t")
        reader = TaskMirror(client, prefix="t")
        _create(writer, "early")
        await writer.flush()
        await writer._publish()  # asks: nobody watches, nothing is kept
        assert not await client.exists(["{t}:changes"])
        start = await reader.changes(None)
        assert (start.tasks, start.gap) == ([], False)
        _create(writer, "w")
        _create(reader, "own")
        await writer.flush()
        await reader.flush()
        writer._watch_checked_at = writer._published_at = -1e9
        await writer._publish()
        reader._watch_checked_at = reader._published_at = -1e9
        await reader._publish()
        found = await reader.changes(start.position)
        assert ([row["id"] for row in found.tasks], found.gap) == (["w"], False)
        again = await reader.changes(found.position)
        assert (again.tasks, again.gap) == ([], False)
        writer._changed = None  # too many ids for one entry: readers reload
        await writer._publish()
        assert (await reader.changes(again.position)).gap
