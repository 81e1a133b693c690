"""The Celery worker: thin tasks that run ``models.pipeline.finetune`` for jobs in the database.

The worker imports the service's domain layer (settings, database, storage, job states) and
its queue contract (``service.queue``); the service imports nothing from here.
"""
