# AMOS Label. The two commands a user needs:
#   make run     set up .venv if needed, import the sample studies, start the MONAI Label server
#   make test    set up .venv if needed, run the test suite (what CI runs)
# Options: make run STUDIES=/path/to/amos PORT=8000 HOST=127.0.0.1 PRESET=cpu

PY      := .venv/bin/python
STUDIES ?=
HOST    ?= 127.0.0.1
PORT    ?= 8000
PRESET  ?= cpu
PYTEST_ARGS ?=

.PHONY: run test env bench learning-check lint clean

env:
	@scripts/bootstrap.sh

run: env
	$(PY) -m amoslabel serve $(STUDIES) --host $(HOST) --port $(PORT) --conf preset $(PRESET)

test: env
	.venv/bin/ruff check amoslabel models app bench evaluation tests
	$(PY) -m pytest $(PYTEST_ARGS)

# Times pre-labelling end to end against MONAI Label's radiology SegResNet on the same volumes (about 20 min).
bench: env
	$(PY) -m bench.prelabel

# Trains the UNet of the 3 mm CPU preset on the real CT (about 20 min on 2 cores) and checks Dice >= 0.8 on liver,
# spleen and both kidneys. LEARNING_ARGS="--preset cpu --epochs 40" for the 1.5 mm preset (much longer).
LEARNING_ARGS ?= --preset cpu-fast --epochs 28 --iterations 25
learning-check: env
	$(PY) -m bench.learning_check $(LEARNING_ARGS)

lint: env
	.venv/bin/ruff check amoslabel models app bench evaluation tests
	.venv/bin/ruff format --check amoslabel models app bench evaluation tests

clean:
	rm -rf .workspace .bench test-output
