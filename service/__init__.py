"""The HTTP service: fine-tuning jobs, datasets, class descriptions, a model registry, inference.

Nothing happens at import: ``service.app.create_app(settings)`` builds the app, and its lifespan
opens the database and loads the default model.
"""
