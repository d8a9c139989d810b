"""What crosses a process boundary, typed: task payloads and answers between the web and the workers, the live
events a run and a playground request stream, the evaluation a run stores, a worker's heartbeat record.

Both sides import these models, so a renamed field fails in mypy (or in validation at the boundary), not in a
template. Celery carries them as JSON (`model_dump(mode="json")` out, `model_validate` in).
"""
