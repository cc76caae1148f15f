"""The task dashboard: a self-contained page to see, filter and cancel tasks.

``source`` is its one way to the tasks, ``feed`` its live updates,
``endpoints`` what each route answers, ``routes`` and ``fastapi`` the two
frameworks' routers, ``static/`` the page, its CSS and its JS.
"""
