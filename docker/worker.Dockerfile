# A training worker: one container per GPU, Celery solo pool on the training queue.
# The torch wheels carry their CUDA libraries; the NVIDIA runtime provides the driver.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app
WORKDIR /app

COPY pyproject.toml ./
# With the offline extra: a job may name the offline backbone, whose Hugging Face text tower needs
# transformers to train (worker) and to serve (API). animal-mnist, used only to build that
# backbone, stays out of the images.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['offline']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY alembic.ini ./
COPY models ./models
COPY worker ./worker
COPY service ./service

RUN useradd --create-home --uid 1000 rcs && mkdir -p /data /cache && chown rcs /data /cache
USER rcs

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "worker.health", "--max-age", "60"]
# SIGTERM: the running job checkpoints and goes back to the queue (see stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker"]
