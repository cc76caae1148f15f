import itertools
import time
from typing import Annotated

from fastapi import FastAPI, File, HTTPException, UploadFile

from bgtasks import TaskManager, checkpoint, current_task, logged, timeout
from bgtasks.fastapi import lifespan, task_router

manager = TaskManager(max_concurrency=2)  # each one holds a thread: two at a time
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))

SIZES = {"small": 150, "medium": 600, "large": 1200}
images: dict[str, bytes] = {}  # stands for S3 or a volume
image_ids = itertools.count(1)


def resize(data: bytes, width: int) -> bytes:
    # Stands for Pillow: Image.open(...).thumbnail((width, width)).
    time.sleep(0.001)
    return data[: width // 10]


@logged
@timeout(300)
def make_thumbnails(image_id: str):
    data = images[image_id]
    task = current_task()
    for done, (name, width) in enumerate(SIZES.items(), start=1):
        checkpoint()  # a cancel, or the 300 s, stops it here
        images[f"{image_id}/{name}"] = resize(data, width)
        task.set_progress(done / len(SIZES), message=f"{name} done")
    return {name: f"/images/{image_id}/{name}" for name in SIZES}


@app.post("/images", status_code=202)
async def upload_image(file: Annotated[UploadFile, File()]):
    if not (file.content_type or "").startswith("image/"):
        raise HTTPException(415, "upload an image")
    image_id = f"img-{next(image_ids)}"
    images[image_id] = await file.read()  # store it first: the upload is closed later
    task = manager.spawn(make_thumbnails, image_id)
    return {"image_id": image_id, "status_url": f"/tasks/{task.id}"}
