"""Realistic synthetic residual-stream activations, shared by the benchmarks.

Transformer hidden states are far from i.i.d. Gaussians, and codec ratios and speeds depend on that. The
generator reproduces the features that matter for storage:

- per-dimension Gaussians whose standard deviations are lognormal across dimensions (median ~0.6 before the shared and per-token factors);
- a few *outlier* dimensions with 15-60x the typical standard deviation (|x| in the hundreds);
- a low-rank component shared by all tokens (correlated dimensions);
- a lognormal per-token norm scale (token norms vary by ~40%);
- one "attention-sink" BOS row per sequence: small everywhere except a few dimensions near +-1000.

Rows are a pure function of (profile, row number), so any slice can be regenerated independently.
``cached_rows`` writes the bf16 bits once as a ``.npy`` of uint16 and reuses the file afterwards.

    from benchmarks._data_gen import ActProfile, ActGenerator, cached_rows
    u16_ND = cached_rows("benchmarks/_data", n_rows=262144)           # (N, 2048) uint16 bf16 bits
    acts_ND = torch.from_numpy(u16_ND).view(torch.bfloat16)
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ActGenerator", "ActProfile", "cached_rows", "describe"]

_FORMAT = 3
"""Bumped whenever the generator's output changes, so stale cache files are not reused."""


@dataclass(frozen=True)
class ActProfile:
    """Shape of the synthetic activation distribution."""

    d: int = 2048
    """Hidden size."""
    seq_len: int = 1024
    """Tokens per sequence; row ``i`` with ``i % seq_len == 0`` is a BOS attention-sink row."""
    median_std: float = 0.6
    """Median per-dimension standard deviation."""
    std_spread: float = 0.5
    """Sigma of the lognormal that draws the per-dimension standard deviations."""
    n_outlier_dims: int = 8
    """Dimensions whose standard deviation is multiplied by 15-60x."""
    rank: int = 32
    """Rank of the shared low-rank component."""
    shared_scale: float = 0.4
    """Size of the low-rank component relative to each dimension's own standard deviation."""
    token_scale_sigma: float = 0.35
    """Sigma of the lognormal per-token norm scale."""
    n_sink_dims: int = 3
    """Dimensions that carry the huge values of BOS rows."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d < max(self.n_outlier_dims, self.n_sink_dims, 1) or self.seq_len < 1 or self.rank < 0:
            raise ValueError(f"inconsistent activation profile: {self}")


class ActGenerator:
    """Deterministic bf16 activation rows for one :class:`ActProfile`."""

    def __init__(self, profile: ActProfile | None = None) -> None:
        self.profile = p = profile or ActProfile()
        rng = np.random.default_rng(p.seed)
        std_D = p.median_std * np.exp(p.std_spread * rng.standard_normal(p.d))
        self.outlier_dims = rng.choice(p.d, size=p.n_outlier_dims, replace=False)
        std_D[self.outlier_dims] *= rng.uniform(15.0, 60.0, size=p.n_outlier_dims)
        mean_D = 0.1 * std_D * rng.standard_normal(p.d)
        # low-rank part: each dimension gets shared_scale * std of variance from `rank` common factors
        basis_RD = rng.standard_normal((max(p.rank, 1), p.d)) / math.sqrt(max(p.rank, 1))
        basis_RD *= p.shared_scale * std_D
        self.sink_dims = rng.choice(np.setdiff1d(np.arange(p.d), self.outlier_dims), size=p.n_sink_dims, replace=False)
        self.sink_vals = rng.choice([-1.0, 1.0], size=p.n_sink_dims) * rng.uniform(500.0, 1300.0, size=p.n_sink_dims)
        self._std_D = torch.from_numpy(std_D.astype(np.float32))
        self._mean_D = torch.from_numpy(mean_D.astype(np.float32))
        self._basis_RD = torch.from_numpy(basis_RD.astype(np.float32)) if p.rank else None

    TILE = 4096
    """Rows are drawn in tiles of this many rows, each from its own seed, so any slice is reproducible."""

    def rows(self, start: int, n: int) -> torch.Tensor:
        """Rows ``[start, start + n)`` as a (n, d) bfloat16 tensor (the same rows whatever the slicing)."""
        t0, t1 = start // self.TILE, -(-(start + n) // self.TILE)
        tiles = [self._tile(t) for t in range(t0, t1)]
        full = tiles[0] if len(tiles) == 1 else torch.cat(tiles)
        lo = start - t0 * self.TILE
        return full[lo : lo + n].clone() if len(tiles) > 1 or lo or n != self.TILE else full

    def _tile(self, t: int) -> torch.Tensor:
        p = self.profile
        n = self.TILE
        g = torch.Generator().manual_seed(p.seed * 1_000_003 + t)
        x_ND = torch.randn(n, p.d, generator=g)
        x_ND.mul_(self._std_D).add_(self._mean_D)
        if self._basis_RD is not None:  # in float64: the product's last bits then never depend on BLAS threading
            coef_NR = torch.randn(n, p.rank, generator=g).double()
            x_ND.add_((coef_NR @ self._basis_RD.double()).float())
        # exp in float64: a float32 exp can differ by an ulp between SIMD and scalar paths (buffer alignment),
        # which would make the same rows differ between runs
        x_ND.mul_(torch.exp(p.token_scale_sigma * torch.randn(n, 1, generator=g).double()).float())
        pos_N = torch.arange(t * n, (t + 1) * n) % p.seq_len
        bos = (pos_N == 0).nonzero().squeeze(1)
        if bos.numel():
            x_ND[bos] *= 0.05
            for dim, val in zip(self.sink_dims.tolist(), self.sink_vals.tolist(), strict=True):
                x_ND[bos, dim] = val
        return x_ND.to(torch.bfloat16)

    def bits(self, start: int, n: int) -> np.ndarray:
        """Rows as their uint16 bf16 bits (the storage form)."""
        return self.rows(start, n).view(torch.uint16).numpy()


def cached_rows(
    data_dir: str | os.PathLike[str], n_rows: int, profile: ActProfile | None = None, *, mmap: bool = False
) -> np.ndarray:
    """(n_rows, d) uint16 bf16 bits, generated once into ``data_dir`` and reused (loaded into RAM unless ``mmap``)."""
    gen_profile = profile or ActProfile()
    path = cache_path(data_dir, n_rows, gen_profile)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        gen = ActGenerator(gen_profile)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n_rows, gen_profile.d))
        step = 16384
        for s in range(0, n_rows, step):
            out[s : s + min(step, n_rows - s)] = gen.bits(s, min(step, n_rows - s))
        out.flush()
        del out
        os.replace(tmp, path)
    arr = np.load(path, mmap_mode="r" if mmap else None)
    if arr.shape != (n_rows, gen_profile.d) or arr.dtype != np.uint16:
        raise ValueError(f"{path} holds {arr.dtype} {arr.shape}, expected uint16 {(n_rows, gen_profile.d)}; delete it")
    return arr


def cache_path(data_dir: str | os.PathLike[str], n_rows: int, profile: ActProfile) -> Path:
    """Where :func:`cached_rows` keeps the rows of this profile (the name encodes every parameter)."""
    return Path(data_dir) / f"acts_bf16_n{n_rows}_d{profile.d}_{_profile_key(profile)}_v{_FORMAT}.npy"


def _profile_key(profile: ActProfile) -> str:
    return hashlib.sha1(repr(sorted(asdict(profile).items())).encode()).hexdigest()[:10]


def describe(u16_ND: np.ndarray, seq_len: int = 1024, max_rows: int = 16384) -> dict[str, Any]:
    """Statistics of (the first ``max_rows`` of) bf16 rows, to check that the data looks like activations."""
    x_ND = torch.from_numpy(np.ascontiguousarray(u16_ND[:max_rows])).view(torch.bfloat16).float()
    is_bos = (torch.arange(x_ND.shape[0]) % seq_len) == 0
    body = x_ND[~is_bos]
    std_D = body.std(0)
    z = (body - body.mean(0)) / std_D.clamp_min(1e-12)
    norms = body.norm(dim=1)
    out = {
        "rows": int(x_ND.shape[0]),
        "d": int(x_ND.shape[1]),
        "median_dim_std": float(std_D.median()),
        "dims_std_gt_10x_median": int((std_D > 10 * std_D.median()).sum()),
        "max_abs": float(x_ND.abs().max()),
        "token_norm_median": float(norms.median()),
        "token_norm_cv": float(norms.std() / norms.mean()),
        "pooled_excess_kurtosis": float((z**4).mean() - 3),
    }
    if bool(is_bos.any()):
        out["bos_norm_median"] = float(x_ND[is_bos].norm(dim=1).median())
    return out
