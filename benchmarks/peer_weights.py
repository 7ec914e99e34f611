"""Flax parameters of e3elastic's network copied into its PyTorch port (peer_torch.py).

Flax names (``interaction_0/mix/w[0,1]``, ``species/embed/embedding``, ...) are mapped onto
the port's torch parameters; each path block of an e3nn-jax linear lands at its offset in the
flat weight of the matching ``o3.Linear``. Every array and every torch parameter must be used
exactly once with the same shape.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from peer_torch import TorchElasticityNet


def _linear_slices(linear) -> dict[tuple[int, int], tuple[int, tuple[int, int]]]:
    """``(i_in, i_out) -> (offset, shape)`` of each path's block in an ``o3.Linear`` weight."""
    out, offset = {}, 0
    for ins in linear.instructions:
        if ins.i_in == -1:
            continue
        out[(ins.i_in, ins.i_out)] = (offset, tuple(ins.path_shape))
        offset += int(np.prod(ins.path_shape))
    return out


def load_flax_params(net: TorchElasticityNet, flat: dict[str, np.ndarray]) -> None:
    """Copy flattened flax parameters (``params.npz`` names, with or without ``params/``) into
    the port; raises ``KeyError``/``ValueError`` unless every array and every torch parameter
    is used exactly once with the same shape."""
    flat = {k.removeprefix("params/"): np.asarray(v, np.float32) for k, v in flat.items()}
    filled: set[str] = set()
    used: set[str] = set()
    params = dict(net.named_parameters())

    def put(torch_name: str, value: np.ndarray, index=None) -> None:
        p = params[torch_name]
        t = torch.from_numpy(np.array(value, np.float32))
        with torch.no_grad():
            if index is None:
                if tuple(p.shape) != tuple(t.shape):
                    raise ValueError(f"{torch_name}: shape {tuple(p.shape)} != {tuple(t.shape)}")
                p.copy_(t)
            else:
                p[index[0] : index[0] + t.numel()] = t.reshape(-1)
        filled.add(torch_name if index is None else f"{torch_name}[{index[0]}]")

    def dense(prefix: str, module: str) -> None:
        put(f"{module}.weight", flat[f"{prefix}/kernel"].T)
        put(f"{module}.bias", flat[f"{prefix}/bias"])
        used.update({f"{prefix}/kernel", f"{prefix}/bias"})

    def linear(prefix: str, module: str, lin) -> None:
        slices = _linear_slices(lin)
        names = [k for k in flat if k.startswith(prefix + "/w[")]
        if len(names) != len(slices):
            raise ValueError(f"{prefix}: {len(names)} paths in JAX, {len(slices)} in the port")
        for k in names:
            i_in, i_out = map(int, re.match(r".*/w\[(\d+),(\d+)\]", k).groups())
            offset, shape = slices[(i_in, i_out)]
            if flat[k].shape != shape:
                raise ValueError(f"{k}: shape {flat[k].shape}, port path {shape}")
            put(f"{module}.weight", flat[k], index=(offset, shape))
            used.add(k)

    emb = "species/" if any(k.startswith("species/") for k in flat) else ""
    for name, module in (
        ("descriptor_in", "species.descriptor_in"),
        ("descriptor_out", "species.descriptor_out"),
    ):
        if f"{emb}{name}/kernel" in flat:
            dense(f"{emb}{name}", module)
    for name, module in (
        ("element_correction", "species.element_correction"),
        ("theory", "species.theory"),
        ("embed", "species.embed"),
    ):
        if f"{emb}{name}/embedding" in flat:
            put(f"{module}.weight", flat[f"{emb}{name}/embedding"])
            used.add(f"{emb}{name}/embedding")
    for i, block in enumerate(net.interactions):
        pre = f"interaction_{i}"
        for j in range(len(block.radial.hidden)):
            dense(f"{pre}/radial/dense_{j}", f"interactions.{i}.radial.hidden.{j}")
        dense(f"{pre}/radial/out", f"interactions.{i}.radial.out")
        linear(f"{pre}/mix", f"interactions.{i}.mix", block.mix)
        linear(f"{pre}/self", f"interactions.{i}.self_interaction", block.self_interaction)
        linear(f"{pre}/skip", f"interactions.{i}.skip", block.skip)
    linear("readout", "readout", net.readout)

    unused = sorted(set(flat) - used)
    if unused:
        raise KeyError(f"JAX parameters not copied: {unused}")
    covered = {n.split("[")[0] for n in filled}
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in covered)
    if missing:
        raise KeyError(f"port parameters not filled: {missing}")
    n_copied = sum(v.size for v in flat.values())
    n_port = sum(p.numel() for p in params.values() if p.requires_grad)
    if n_copied != n_port:
        raise ValueError(f"copied {n_copied} numbers into {n_port} parameters")
