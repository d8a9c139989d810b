# The README's two commands: `make run` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
GGUF_STAMP := $(VENV)/.gguf-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
# The GGUF export's llama.cpp, built from llama-cpp-python's source distribution with the system compiler:
# only what the export needs (no multimodal library), portable code (no -march=native: the wheel pip keeps
# runs on any x86-64 with AVX2). 4 to 9 minutes on 2 cores the first time; pip keeps the wheel.
GGUF_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

.PHONY: run test test-postgres quick lint bench bench-gpu system-deps install gguf tiny-model sample-data clean

run: install gguf
	$(VENV)/bin/loradeck up

# The suite, with llama.cpp's first build running beside it; the GGUF export's tests (marker `gguf`) come
# once it is done, then the database tests once more on PostgreSQL.
test: install system-deps lint
	@nice -n 10 $(MAKE) --no-print-directory gguf > $(VENV)/gguf-build.log 2>&1 & build=$$!; \
	$(PY) -m pytest -p no:cacheprovider --durations=12 -m "not gguf"; suite=$$?; \
	wait $$build || { tail -40 $(VENV)/gguf-build.log; exit 1; }; \
	LORADECK_REQUIRE_GGUF=1 $(PY) -m pytest -p no:cacheprovider --durations=5 -m gguf || exit 1; \
	exit $$suite
	$(MAKE) --no-print-directory test-postgres

# The tests that open a database (marker `db`) once more, on a private PostgreSQL server that
# scripts/with-postgres.sh starts and removes; browser tests stay on SQLite. Narrow it with ARGS, e.g.
# `make test-postgres ARGS=tests/app/test_api.py`, or widen it with PG_MARKERS=db.
PG_MARKERS ?= db and not browser and not gguf and not learns and not (engine and slow)
test-postgres: install system-deps
	bash scripts/with-postgres.sh $(PY) -m pytest -p no:cacheprovider --durations=12 -m "$(PG_MARKERS)" $(ARGS)

# The inner loop: no browser, no long training runs, no GGUF export.
quick: install
	$(PY) -m pytest -m "not browser and not slow and not gguf" -q

lint: install
	$(VENV)/bin/ruff check app worker tools tests $(wildcard bench)
	$(VENV)/bin/ruff format --check app worker tools tests $(wildcard bench)
	$(VENV)/bin/mypy app worker tools $(wildcard bench)

install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[web,worker,test]'
	rm -f $(VENV)/.installed-* && touch $@

# The `gguf` extra (llama-cpp-python, gguf, sentencepiece) and llama.cpp's converter for it. Installed by
# name, not with `-e .[gguf]`: a test run may be using the project's own install meanwhile.
gguf: $(GGUF_STAMP)

$(GGUF_STAMP): $(STAMP)
	$(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gguf'], sep='\n')" > $(VENV)/gguf-requirements.txt
	CMAKE_ARGS="$(GGUF_CMAKE_ARGS)" $(PY) -m pip install -q -c constraints.txt -r $(VENV)/gguf-requirements.txt
	$(PY) -m worker.export fetch-converter
	rm -f $(VENV)/.gguf-* && touch $@

# Every benchmark; each writes bench/results/<name>.json and its table in bench/README.md.
bench: install system-deps
	$(PY) bench/accuracy.py --rows 200
	$(PY) bench/merge.py --repeats 3
	$(PY) bench/web.py
	$(PY) bench/throughput.py --repeats 3
	$(PY) bench/first_metric.py --repeats 5
	$(PY) bench/packing.py --repeats 3
	$(PY) bench/describe.py --rows 100000 --repeats 3
	$(PY) bench/preference.py --repeats 3
	$(PY) bench/grpo.py --part both --seeds 0,1,2 --repeats 3
	$(MAKE) gguf && $(PY) bench/gguf.py

# On a machine with one NVIDIA GPU, no network needed (bench/gpu/README.md).
bench-gpu: install
	$(PY) bench/gpu/run.py

# Redis and Chromium for the tests (as root, from Debian's packages; a no-op when present).
system-deps:
	bash scripts/system-deps.sh

# Rebuild the bundled tiny model and sample dataset (both are committed; this reproduces them).
tiny-model: install
	$(PY) -m tools.tiny_model --out assets/tiny-llama

sample-data: install
	$(PY) -m tools.sample_data --out assets/datasets/tw-address

clean:
	rm -rf $(VENV) data
