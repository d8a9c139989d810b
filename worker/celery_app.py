"""The worker's Celery app. Start a worker with:

    python -m celery -A worker.celery_app worker -Q train,merge --pool solo -c 1

It shares its configuration with the web (`app.queue.celery_config`), so task names, queues and the
broker always agree. No ML library is imported here: the tasks import them when they run.
"""

from __future__ import annotations

import os

from celery import Celery

from app.config import get_settings
from app.queue import celery_config

# Read by OpenMP when torch loads, so it must be set before the first task imports torch. Spinning
# threads collapse when the worker shares its cores (web, Redis, a second worker): on a busy 2-core box
# the default 60-step QLoRA run of the tiny model took 85 s with spinning threads, 11 s with passive ones,
# and about 10% longer when the cores are free. An operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = Celery("loradeck", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))
