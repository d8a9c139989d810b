"""The HTTP layer: routes, pages, the security middleware, uploads and downloads, live events to the browser.

Routes read the request, call one service function (app.services) and render; domain errors become HTTP
answers in one handler (app.web.errors). Nothing outside this package speaks HTTP.
"""
