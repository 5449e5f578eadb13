# AMOS Label. The two commands a user needs:
#   make run     set up .venv if needed, import the sample studies, start the MONAI Label server
#   make test    set up .venv if needed, run the test suite (what CI runs)
# Options: make run STUDIES=/path/to/amos PORT=8000 HOST=127.0.0.1 PRESET=cpu LABELS_AS=final

PY      := .venv/bin/python
STUDIES ?=
HOST    ?= 127.0.0.1
PORT    ?= 8000
PRESET  ?= cpu
# what the labels of a dataset in STUDIES become at import: final (training data) or prelabel (the juniors' work)
LABELS_AS ?= final
# models fetched (once) and made the first pre-labelers: totalsegmentator, totalsegmentator-fast, or none
PRETRAINED ?=
PYTEST_ARGS ?=
# test modules run on this many workers (pytest-xdist; each module stays whole, in order, on one worker). Three on
# 2 cores: a module often waits on a server, a browser or Ray, and a third worker fills that time (14:13 against
# about 15:20 on two, 2026-12-06). A fourth does not: 15:17 against 14:42 on three, each module's waits growing
# (2026-12-07; the cores were 55 % busy on three)
TEST_WORKERS ?= 3

.PHONY: run run-dicomweb run-team test env reliability bench gpu-check bench-attention bench-clicks bench-cohort bench-effort bench-nnunet-model bench-metrics bench-review bench-review-profile bench-keepalive baselines prior-check learning-check al-simulation lint clean

env:
	@scripts/bootstrap.sh

run: env
	@scripts/fetch-niivue.sh >/dev/null || echo "NiiVue not fetched (npm?): the case page's slice viewer is off"
	$(PY) -m amoslabel serve $(STUDIES) --host $(HOST) --port $(PORT) --conf preset $(PRESET) --labels-as $(LABELS_AS) \
	  $(if $(PRETRAINED),--pretrained $(PRETRAINED))

# The same server on a private Orthanc (DICOMweb) with the de-identified sample series, and OHIF on port 3000.
run-dicomweb: env
	@scripts/system-packages.sh
	@scripts/fetch-niivue.sh >/dev/null
	$(PY) -m amoslabel serve-dicomweb --host $(HOST) --port $(PORT) --conf preset $(PRESET)

# A team on this machine: a private PostgreSQL, SERVERS app servers (ports PORT+1...) and HAProxy on PORT.
SERVERS ?= 2
run-team: env
	@scripts/system-packages.sh
	@scripts/fetch-niivue.sh >/dev/null || echo "NiiVue not fetched (npm?): the case page's slice viewer is off"
	$(PY) -m amoslabel serve-team $(STUDIES) --servers $(SERVERS) --host $(HOST) --port $(PORT) --conf preset $(PRESET) \
	  --labels-as $(LABELS_AS)

test: env
	@scripts/system-packages.sh
	@scripts/fetch-niivue.sh >/dev/null
	.venv/bin/ruff check amoslabel models app bench evaluation review strategies scripts tests
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The reliability suite at full load (kill -9 x12 over 400 writes, 50 writers, the bad-input corpus, the role matrix,
# schemathesis at 100 examples per operation, a team of 2 servers: 3 kills, PostgreSQL stopped, a 30 s race; a full
# label store; backup/restore), then the table of docs/reliability.md (about 10 min).
# `make test` runs the same tests in their short form.
reliability: env
	@scripts/system-packages.sh
	AMOS_RELIABILITY=full $(PY) -m pytest tests/reliability tests/review/test_concurrency.py tests/amoslabel/data/test_backup.py
	$(PY) -m bench.reliability_report

# Times pre-labelling end to end against MONAI Label's radiology SegResNet on the same volumes (about 20 min).
bench: env
	$(PY) -m bench.prelabel

# The reference nnU-Net v2 model of bench-effort: nnU-Net's own commands (plan, preprocess, train 5 epochs on the CPU)
# on a synthetic split made from the real AMOS label maps; .bench/nnunet/ (about an hour on 2 cores). Not
# TotalSegmentator: its weights cannot be downloaded here.
bench-nnunet-model: env
	$(PY) -m bench.nnunet_reference

# The correction time a pre-label saves on the real scans with labels: empty, the atlas prior, our cpu-preset UNet
# and the imported nnU-Net model (both trained on the synthetic split only); per organ, with Dice (.bench/effort/).
# Trains the nnU-Net model first if .bench/nnunet has none, and the UNet once (about 30 min on 2 cores).
bench-effort: env
	@test -f .bench/nnunet/reference.json || $(PY) -m bench.nnunet_reference
	$(PY) -m bench.effort

# Dice + NSD + HD95 for 15 organs on the real 512x512x82 AMOS label pair, against DeepMind's surface-distance.
bench-metrics: env
	$(PY) -m bench.metrics

# Every baseline model trained and scored on one split, one table (.bench/baselines/table.md). About an hour on
# 2 CPU cores at the default 150 steps; BASELINE_ARGS="--dataset /data/amos --preset full --steps 20000" on a GPU.
BASELINE_ARGS ?= --steps 150
baselines: env
	$(PY) -m bench.baselines $(BASELINE_ARGS)

# The review workflow under load: 10,000 cases, 20 concurrent clients, against MONAI Label's datastore listing; one
# server on SQLite, then a team (2 and 1 app servers, 2 review workers, PostgreSQL, HAProxy); CPU per operation
# (about 15 min).
bench-review: env
	@scripts/system-packages.sh
	$(PY) -m bench.review_load $(if $(BASELINE),--baseline $(BASELINE)) $(if $(BASELINE_PYTHON),--baseline-python $(BASELINE_PYTHON))

# Where a review operation's CPU goes without HTTP: SQL statements, CPU and a cProfile per operation (10,000 cases).
bench-review-profile: env
	$(PY) -m bench.review_profile

# Why a kept-alive request got no answer: POSTs sent as uvicorn closes an idle connection, at 5 s and at 75 s.
bench-keepalive: env
	$(PY) -m bench.keepalive

# Active learning against foreground-aware random on synthetic volumes from the real label maps: 5 seeds, six
# strategies, models that segment (full-pool mDice about 0.6 at 10 mm), fine-tuned between rounds; about 3 hours on
# 2 cores. AL_ARGS="--strategies random foreground_random uncertainty clasp attention --rounds 4 --steps 150 --jobs 2"
# is the shorter run of docs/active-learning.md (about 1.5 hours).
AL_ARGS ?=
al-simulation: env
	$(PY) -m bench.al_simulation $(AL_ARGS)

# Does the attention map point at the pre-label's errors, and does the quality estimator find the organs that fail?
# Voxel AUROC/AP and case-level recall of attention and entropy; organ AUROC, failing cases in the top 20 % by
# expected failures, and the pass policy's curve (docs/quality-pass-policy.png), on synthetic held-out volumes and the
# real scans with labels (.bench/attention/, .bench/quality/; about 45 min on 2 cores).
bench-attention: env
	$(PY) -m bench.attention
	$(PY) -m bench.quality --grid 48 --spacing 8 --seeds 10 --plot docs/quality-pass-policy.png

# A simulated AbdomenAtlas-size cohort (2,000 synthetic cases) pre-labelled on Ray with 1 and 2 model workers, per
# stage, against the infer task one case at a time; the store with every case (.bench/cohort/; COHORT_ARGS: --full
# pre-labels all 2,000, about 30 min more on 2 cores).
bench-cohort: env
	$(PY) -m bench.cohort $(COHORT_ARGS)

# Clicks to Dice 0.90 (NoC@90) from the atlas prior and from a trained segmentor, with and without a click model
# trained on simulated clicks, on synthetic held-out volumes and the real scans; the click round trip through the real
# server (.bench/clicks/; about an hour on 2 cores, 14 min of it training; the trained pair is kept in
# .bench/clicks/networks/ and reused by a run with the same settings; CLICK_ARGS: --parts latency for the round trip).
bench-clicks: env
	$(PY) -m bench.clicks $(CLICK_ARGS)

# What one GPU does for this project (bench/gpu_check.py): pre-label a 512x512x300 CT with the full preset (with and
# without flip TTA), training steps/s (AMP, fp32), one DDP step over NCCL, the click round trip; one JSON
# (.bench/gpu-check.json). Here it runs in .venv; on a GPU machine without this environment (README: The GPU check) it
# installs the carried wheels (.whl/, from scripts/gpu-wheels.sh) into /tmp/amoslabel-site and runs with python3.
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -x $(PY) ]; then $(PY) -m bench.gpu_check $(GPU_CHECK_ARGS); \
	else python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/amoslabel-site .whl/*.whl && \
	  PYTHONPATH=/tmp/amoslabel-site python3 -m bench.gpu_check $(GPU_CHECK_ARGS); fi

# The atlas prior on the real CT and MRI, from an atlas built without them (per-organ Dice).
prior-check: env
	$(PY) -m bench.prior_check

# Trains the UNet of the 3 mm CPU preset on the real CT (about 20 min on 2 cores) and checks Dice >= 0.8 on liver,
# spleen and both kidneys. LEARNING_ARGS="--preset cpu --epochs 40" for the 1.5 mm preset (much longer).
LEARNING_ARGS ?= --preset cpu-fast --epochs 28 --iterations 25
learning-check: env
	$(PY) -m bench.learning_check $(LEARNING_ARGS)

lint: env
	.venv/bin/ruff check amoslabel models app bench evaluation review strategies scripts tests
	.venv/bin/ruff format --check amoslabel models app bench evaluation review strategies scripts tests

clean:
	rm -rf .workspace .bench test-output
