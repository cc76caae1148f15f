"""The web layer: what Starlette and FastAPI apps mount and depend on.

``endpoints`` answers the status and cancel API for both frameworks (bodies,
paging, fixed error wording); ``routes`` (Starlette) and ``fastapi`` wrap it
as routers; ``tracked`` is a request's tracked ``BackgroundTasks``;
``lifespan`` ties a TaskManager to the app; ``dashboard/`` is the task page.
Everything here reads the manager through its public methods only.
"""
