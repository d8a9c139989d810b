"""The use cases: what the API, the pages and the CLI can do, each in one function.

A service takes the session and the settings explicitly, works through the domain modules (app.runs,
app.datasets, app.queue, app.preflight, app.rundir) and raises domain errors (app.errors); it never speaks
HTTP. A route reads the request, calls one service function and renders.
"""
