# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""A sharded copy of a single-file checkpoint, as published checkpoints are."""

import shutil
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file


def write_sharded_copy(model: str, dest: Path, num_shards: int = 2) -> Path:
    """Copy a checkpoint into `dest`, its weights split into shards named as
    Transformers names them (model-0000i-of-0000n.safetensors)."""
    source = Path(model) if Path(model).is_dir() else Path(snapshot_download(model))
    for file in source.iterdir():
        if file.is_file() and file.suffix != ".safetensors":
            shutil.copy(file, dest / file.name)
    state = {
        name: tensor
        for file in sorted(source.glob("*.safetensors"))
        for name, tensor in load_file(file).items()
    }
    names = sorted(state)
    for i in range(num_shards):
        shard = {name: state[name] for name in names[i::num_shards]}
        save_file(shard, dest / f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors")
    return dest


def same_weights(a: object, b: object) -> bool:
    """Whether two reference models hold identical modules and weights."""
    modules_a = {k: v for k, v in vars(a).items() if isinstance(v, torch.nn.Module)}
    modules_b = {k: v for k, v in vars(b).items() if isinstance(v, torch.nn.Module)}
    if not modules_a or modules_a.keys() != modules_b.keys():
        return False
    for key, module in modules_a.items():
        state_a, state_b = module.state_dict(), modules_b[key].state_dict()
        if state_a.keys() != state_b.keys() or not all(
            torch.equal(state_a[name], state_b[name]) for name in state_a
        ):
            return False
    return True
