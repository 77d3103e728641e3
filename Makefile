# Two commands do all set-up on a fresh machine (Python 3.11, CPU only):
#   make demo   the main job: run recipes/sentiment-edge.yaml (fine-tuned cloud model -> device model +
#               router, against stated targets; report in runs/sentiment-edge/report.{md,html,json})
#   make test   run the test suite
# Also: make quick (the <=5-minute recipe), make headline (the headline benchmark, after demo),
#       make foundation (fine-tune + export + bench into runs/demo: what benchmarks/*.sh start from).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUNS    ?= runs/demo
STAMP   := $(VENV)/.edgeshrink-installed

.PHONY: setup demo quick headline foundation test test-system node-system data clean-demo

# llama.cpp (the LLM bench's peer; the SmolLM2 package depends on it) is built from source for this CPU,
# but without AMX: its native AMX build segfaults in the first llama_decode on our VMs (harmless flags on
# CPUs without AMX). The build takes minutes on 2 cores, so its wheel is kept outside the checkout and reused
# by the next set-up on the same machine: the folder's name hashes the CPU's flags, the Python version, the
# build flags and the version, so a wheel built for another CPU or build is never reused (pip's own cache is
# off for it: pip would reuse a wheel built anywhere).
AMX_OFF := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$(AMX_OFF)" -DCMAKE_CXX_FLAGS="$(AMX_OFF)"
LLAMA_VERSION := 0.3.36
LLAMA_KEY := $(shell (grep -m1 '^flags' /proc/cpuinfo; $(PY) --version; echo '$(LLAMA_CMAKE_ARGS) $(LLAMA_VERSION)') \
	2>/dev/null | sha256sum | cut -c1-16)
LLAMA_WHEELS := $(HOME)/.cache/edgeshrink/wheels/llama-cpp-$(LLAMA_KEY)

# torch is installed first and pinned: the CPU wheel 2.13.0; a bare `torch` pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	test -n "$$(ls $(LLAMA_WHEELS)/*.whl 2>/dev/null)" || { rm -rf $(LLAMA_WHEELS).tmp && \
		CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/python -m pip wheel -q --no-cache-dir --no-deps \
		--no-binary llama-cpp-python -w $(LLAMA_WHEELS).tmp "llama-cpp-python==$(LLAMA_VERSION)" && \
		mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); }
	$(BIN)/python -m pip install -q $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/python -m pip install -q -e ".[device,demo,dev,llm,ray,signing]"
	$(BIN)/edgeshrink data prepare all
	touch $(STAMP)

# The web runtime's JavaScript packages (onnxruntime-web, tokenizers.js, @huggingface/jinja, and playwright-core for
# the browser tests), exactly as package-lock.json pins them. --ignore-scripts: none of them needs an install
# script, and nothing is fetched from outside the npm registry.
NODE_STAMP := node_modules/.package-lock.json
$(NODE_STAMP): package-lock.json | node-system
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

# Node.js (>= 18) and npm from Debian when missing (the web packs' tests run the runtime under Node).
node-system:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		echo "installing nodejs and npm (Debian) for the web runtime's tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends nodejs npm >/dev/null; }

setup: $(STAMP) $(NODE_STAMP)

data: $(STAMP)
	$(BIN)/edgeshrink data prepare all

demo: $(STAMP)
	$(BIN)/edgeshrink run recipes/sentiment-edge.yaml --out runs/sentiment-edge

quick: $(STAMP)
	$(BIN)/edgeshrink run recipes/quick.yaml --out runs/quick

headline: demo
	bash benchmarks/headline

# The fine-tuned weights are cached: a second `make foundation` skips training.
$(RUNS)/cloud/edgeshrink.json: | $(STAMP)
	$(BIN)/edgeshrink finetune minilm --data sentiment-movies --out $(RUNS)/cloud --force

foundation: $(RUNS)/cloud/edgeshrink.json
	$(BIN)/edgeshrink export $(RUNS)/cloud --out $(RUNS)/bundle --force
	$(BIN)/edgeshrink bench $(RUNS)/cloud $(RUNS)/bundle --data sentiment-movies \
		--json $(RUNS)/bench.json --md $(RUNS)/bench.md

# What the tests need beyond Python and Node: a headless browser (the offline /docs page, tests/serve/test_docs.py,
# report.html, and the web pack's demo page, tests/web) and a CJK font (plots with CJK labels, tests/test_plots.py). Installed from Debian only when
# missing (~15 s; as root, or with sudo), so that a fresh clone's `make test` runs those tests, not skips them.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-system:
	@if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -q "Noto Sans CJK"; then \
		echo "installing chromium and fonts-noto-cjk (Debian) for the browser and CJK-font tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends chromium fonts-noto-cjk fontconfig >/dev/null && \
		rm -f "$${HOME:-/root}"/.cache/matplotlib/fontlist-*.json; \
	fi

# Two passes (tests/conftest.py says which tests are serial and why): the rest on two workers, then the tests that
# assert on timing alone. Both must pass.
test: $(STAMP) $(NODE_STAMP) test-system
	$(BIN)/python -m pytest -q --durations=15 -n 2 --dist loadscope -m "not serial"
	$(BIN)/python -m pytest -q --durations=10 -m serial

clean-demo:
	rm -rf $(RUNS)
