# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Offline throughput of Tarsier and Tarsier2 video captioning: vLLM against
independent Transformers references (``make bench``; ``--help`` for options).

The benchmark itself is the package ``tarsier_offline`` beside this script
(its docstring describes the arms, the fairness rules and the checkpoints).
Each arm runs in a process of its own, started as this script with
``--worker``.

    build/venv/bin/python bench/benchmark_tarsier.py --num-videos 2 --repetitions 1
"""

from tarsier_offline.cli import main

if __name__ == "__main__":
    main()
