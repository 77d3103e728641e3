# Two commands do all set-up on a fresh machine (Python 3.11, CPU only):
#   make demo   fine-tune MiniLM on sentiment-movies, export it, bench PyTorch eager vs ONNX fp32
#   make test   run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUNS    ?= runs/demo
STAMP   := $(VENV)/.edgeshrink-installed

.PHONY: setup demo test data clean-demo

# torch is installed first and pinned: the CPU wheel 2.13.0; a bare `torch` pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[device,demo,dev]"
	$(BIN)/edgeshrink data prepare all
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(BIN)/edgeshrink data prepare all

# The fine-tuned weights are cached: a second `make demo` skips training.
$(RUNS)/cloud/edgeshrink.json: | $(STAMP)
	$(BIN)/edgeshrink finetune minilm --data sentiment-movies --out $(RUNS)/cloud --force

demo: $(RUNS)/cloud/edgeshrink.json
	$(BIN)/edgeshrink export $(RUNS)/cloud --out $(RUNS)/bundle --force
	$(BIN)/edgeshrink bench $(RUNS)/cloud $(RUNS)/bundle --data sentiment-movies \
		--json $(RUNS)/bench.json --md $(RUNS)/bench.md

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(RUNS)
