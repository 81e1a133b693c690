"""The model registry (after MLflow): named models, integer versions, aliases."""
