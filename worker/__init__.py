"""The Celery worker: thin tasks that run ``models.pipeline.finetune`` for jobs in the database.

The service imports only ``worker.contracts`` (task names, queue, payload schema, broker
options); the task modules are the worker's own.
"""
