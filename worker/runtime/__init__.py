"""The worker's runtime: the Celery app and its thin tasks, the lease on a run, the reaper of lost runs, the
registry of workers online, placement, the live-event publisher and bounded child processes."""
