"""The FastAPI router's OpenAPI model describes exactly what TaskInfo carries."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from bgtasks import TaskInfo, TaskState
from bgtasks._web.fastapi import BgtasksTaskInfo


def test_task_info_model_has_the_fields_of_task_info() -> None:
    """A field added to TaskInfo (or to the model) alone fails here."""
    expected = {field.name for field in dataclasses.fields(TaskInfo)}
    assert expected == set(BgtasksTaskInfo.model_fields)


def test_to_dict_gives_the_keys_the_model_documents() -> None:
    """to_dict() of a finished task with a JSON result has every model field."""
    values: dict[str, Any] = dict.fromkeys(
        (field.name for field in dataclasses.fields(TaskInfo)), None
    )
    values.update(
        id="x",
        name="f",
        state=TaskState.SUCCEEDED,
        created_at=datetime.now(timezone.utc),
        result=1,
        attempt=1,
        cancel_requested=False,
    )
    assert set(TaskInfo(**values).to_dict()) == set(BgtasksTaskInfo.model_fields)
