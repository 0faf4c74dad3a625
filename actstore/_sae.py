"""A small TopK sparse autoencoder, pre-trained weight loading (safetensors / npz) and exact checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._errors import SchemaMismatchError, UnknownKeyError

__all__ = ["TopKSAE", "explained_variance", "load_checkpoint", "save_checkpoint"]

_REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")


class TopKSAE(nn.Module):
    """``z = TopK(relu((x - b_dec) @ W_enc + b_enc))``, ``x_hat = z @ W_dec + b_dec``; W_enc (d, m), W_dec (m, d).

    ``threshold`` (m,), present in JumpReLU files such as Gemma Scope's, is kept and saved but TopK selects.
    """

    def __init__(self, d_in: int, d_sae: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        if not 0 < k <= d_sae:
            raise SchemaMismatchError(f"k must be in [1, d_sae={d_sae}], got {k}")
        self.k = k
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d_sae, d_in, generator=g)
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(d_sae))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], k: int) -> TopKSAE:
        """Weights from a ``.safetensors`` or ``.npz`` file holding W_enc, W_dec, b_enc, b_dec (+ threshold)."""
        p = Path(path)
        if p.suffix == ".npz":
            with np.load(p) as f:
                tensors = {name: torch.from_numpy(np.asarray(f[name], dtype=np.float32)) for name in f.files}
        else:
            tensors = {n: t.float() for n, t in load_file(str(p)).items()}
        missing = [n for n in _REQUIRED if n not in tensors]
        if missing:
            raise UnknownKeyError(f"{p} lacks {missing}; an SAE file holds {list(_REQUIRED)} (+ threshold), found {sorted(tensors)}")
        d_in, d_sae = tensors["W_enc"].shape
        expect = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
        for name, shape in expect.items():
            if name in tensors and tuple(tensors[name].shape) != shape:
                raise SchemaMismatchError(f"{name} in {p} has shape {tuple(tensors[name].shape)}, expected {shape}")
        sae = cls(d_in, d_sae, k)
        with torch.no_grad():
            for name in (*_REQUIRED, "threshold"):
                if name in tensors:
                    getattr(sae, name).copy_(tensors[name])
        return sae

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        pre_BM = torch.relu((x_BD - self.b_dec) @ self.W_enc + self.b_enc)
        vals_BK, idx_BK = pre_BM.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_BM).scatter_(-1, idx_BK, vals_BK)

    def forward(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_BM = self.encode(x_BD)
        return z_BM @ self.W_dec + self.b_dec, z_BM

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)


def explained_variance(x_BD: torch.Tensor, xhat_BD: torch.Tensor) -> float:
    """``1 - |x - x_hat|^2 / |x - mean(x)|^2`` over the batch."""
    resid = (x_BD - xhat_BD).pow(2).sum()
    total = (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1 - resid / total)


def save_checkpoint(path: str | os.PathLike[str], sae: TopKSAE, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``sae.safetensors`` (weights), ``optim.safetensors`` (Adam moments and step counts), ``state.json``."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().contiguous().cpu() for n, t in sae.state_dict().items()}, str(p / "sae.safetensors"))
    names = {id(param): name for name, param in sae.named_parameters()}
    opt_t: dict[str, torch.Tensor] = {}
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                opt_t[f"{names[id(param)]}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    save_file(opt_t, str(p / "optim.safetensors"))
    tmp = p / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, p / "state.json")


def load_checkpoint(path: str | os.PathLike[str], sae: TopKSAE, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the JSON state."""
    p = Path(path)
    sae.load_state_dict(load_file(str(p / "sae.safetensors")))
    opt_t = load_file(str(p / "optim.safetensors"))
    for name, param in sae.named_parameters():
        st = {key.split(".", 1)[1]: t for key, t in opt_t.items() if key.split(".", 1)[0] == name}
        if st:
            opt.state[param] = st
    return json.loads((p / "state.json").read_text())
