# A local S3-compatible server for docker-compose.s3.yml (build context: the repository, of
# which it copies nothing): moto's standalone server (the one the
# tests run, tests/storage), in memory. Scaffolding to try object storage on one host and to run
# `make compose-smoke-s3`, not part of a deployment: point RCS_STORAGE_URL and AWS_ENDPOINT_URL
# at S3 or another S3-compatible store there instead (docs/guides/deployment.md).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# In a virtual environment, as docker/Dockerfile (a Debian python has no pip of its own), with
# the versions the dev extra pins (pyproject.toml).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install "moto[server]==5.2.5" "boto3==1.43.117"
ENV PATH=/opt/venv/bin:$PATH
EXPOSE 9000
CMD ["python", "-m", "moto.server", "-H", "0.0.0.0", "-p", "9000"]
