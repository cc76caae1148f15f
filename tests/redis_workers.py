"""What the Redis tests do to a worker's link to Redis from inside its process."""

from __future__ import annotations

from bgtasks import TaskManager
from bgtasks._redis.backend import RedisBackend
from bgtasks._redis.tasks import TaskMirror

__all__ = ["stop_mirroring"]


def stop_mirroring(manager: TaskManager) -> TaskMirror:
    """Stop the worker's mirror loop without unregistering, as a paused worker."""
    backend = manager.backend
    assert isinstance(backend, RedisBackend)
    mirror = backend._mirror
    assert mirror is not None
    assert mirror._run_scope is not None
    mirror._run_scope.cancel()
    return mirror
