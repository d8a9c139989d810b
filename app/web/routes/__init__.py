"""HTTP routes: the JSON API (`api`) and the HTML pages (`pages`), both thin: they parse the request, call
app.services and render the answer."""
