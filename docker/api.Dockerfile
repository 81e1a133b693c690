# The API: FastAPI under uvicorn. Inference runs on CPU here unless a GPU is given to it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app
WORKDIR /app

# Dependencies first (a layer that survives source edits), read from pyproject's list.
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

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
