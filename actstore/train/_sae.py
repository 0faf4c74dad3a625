"""A small TopK sparse autoencoder, pre-trained weight loading (safetensors / npz) and exact checkpoints.

The forward pass is sparse where it can be: the encoder is one dense matmul and a top-k (every latent has to be
scored to pick the k largest), but the decoder only touches the k active latents' decoder rows
(``embedding_bag``: a weighted sum of k rows per token, and a backward that scatters into those rows only)
instead of a dense ``(B, m) @ (m, d)`` matmul over a matrix that is almost all zeros, and its two dense backward
matmuls. ``b_dec`` is subtracted from the input as ``x @ W_enc - b_dec @ W_enc``, the same value up to rounding,
so its gradient is a vector-matrix product instead of a third (B, m) x (m, d) matmul. :meth:`TopKSAE.forward_dense`
keeps the textbook dense formulation as the reference (tests and ``benchmarks/bench_sae.py`` compare the two).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .._errors import SchemaMismatchError, UnknownKeyError

__all__ = ["TopKCodes", "TopKSAE", "explained_variance", "load_checkpoint", "save_checkpoint"]

_REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")


class TopKCodes(NamedTuple):
    """The k active latents of each row: values (post-ReLU, may be 0) and their latent indices."""

    values_BK: torch.Tensor
    """(rows, k) activations of the selected latents."""
    indices_BK: torch.Tensor
    """(rows, k) int64 latent indices, in no particular order."""

    def dense(self, d_sae: int) -> torch.Tensor:
        """The codes as a dense (rows, d_sae) matrix (zeros elsewhere)."""
        z_BM = self.values_BK.new_zeros(*self.values_BK.shape[:-1], d_sae)
        return z_BM.scatter_(-1, self.indices_BK, self.values_BK)


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

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    def encode_topk(self, x_BD: torch.Tensor) -> TopKCodes:
        """The k largest of ``relu((x - b_dec) @ W_enc + b_enc)`` per row, without a dense code matrix."""
        pre_BM = x_BD @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)
        vals_BK, idx_BK = pre_BM.topk(self.k, dim=-1, sorted=False)
        return TopKCodes(torch.relu(vals_BK), idx_BK)  # relu after top-k: the same values, one pass over k not m

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Dense (rows, d_sae) codes (for analysis; training uses :meth:`encode_topk`)."""
        return self.encode_topk(x_BD).dense(self.d_sae)

    def decode(self, codes: TopKCodes) -> torch.Tensor:
        """``x_hat = sum_k values[k] * W_dec[indices[k]] + b_dec``, touching only the k active decoder rows."""
        vals_BK, idx_BK = codes
        lead = vals_BK.shape[:-1]
        xhat_BD = F.embedding_bag(idx_BK.reshape(-1, self.k), self.W_dec, mode="sum",
                                  per_sample_weights=vals_BK.reshape(-1, self.k).to(self.W_dec.dtype))
        return xhat_BD.reshape(*lead, -1) + self.b_dec

    def forward(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, TopKCodes]:
        """``(x_hat, codes)``; ``codes.dense(sae.d_sae)`` gives the dense code matrix if needed."""
        codes = self.encode_topk(x_BD)
        return self.decode(codes), codes

    def forward_dense(self, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference formulation: ``relu`` then top-k scattered into a dense ``z``, ``x_hat = z @ W_dec + b_dec``.

        Same outputs and gradients as :meth:`forward` up to float rounding, at several times the cost.
        """
        pre_BM = torch.relu((x_BD - self.b_dec) @ self.W_enc + self.b_enc)
        vals_BK, idx_BK = pre_BM.topk(self.k, dim=-1, sorted=False)
        z_BM = torch.zeros_like(pre_BM).scatter_(-1, idx_BK, vals_BK)
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
