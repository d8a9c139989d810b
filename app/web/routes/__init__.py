"""HTTP routes: the JSON API (`api`) and the HTML pages (`pages`), built on the same functions."""
