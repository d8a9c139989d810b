"""The worker: Celery tasks that train LoRA/QLoRA adapters and merge them into their base models.

Importing this package (or `worker.celery_app`, `worker.tasks`) stays light: torch, transformers
and peft load inside the task bodies, when there is work to do.
"""
