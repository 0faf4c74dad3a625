"""Helpers shared by the capture tests: an in-memory stand-in for the store writer and small models."""

from __future__ import annotations

import numpy as np
import torch


class MemoryWriter:
    """Records every call the Recorder makes on a StoreWriter; ``done`` callbacks run at once (after a copy)."""

    def __init__(self) -> None:
        self.appends: list[tuple[str, dict[str, np.ndarray], dict[int, torch.Tensor]]] = []
        self.conds: list[tuple[str, dict[str, np.ndarray], torch.Tensor]] = []
        self.samples: list[dict] = []
        self.commits: list[dict | None] = []

    def append(self, role, rows, acts, *, done=None, finite=False):
        self.appends.append((role, {k: np.array(v) for k, v in rows.items()},
                             {k: torch.as_tensor(v).clone() for k, v in acts.items()}))
        if done is not None:
            done()

    def append_cond(self, name, rows, acts, *, done=None, finite=False):
        self.conds.append((name, {k: np.array(v) for k, v in rows.items()}, torch.as_tensor(acts).clone()))
        if done is not None:
            done()

    def append_samples(self, sample, **kw):
        self.samples.append({"sample": np.array(sample), **kw})

    def commit(self, progress=None):
        self.commits.append(progress)

    def rollback(self):
        self.rollbacks = getattr(self, "rollbacks", 0) + 1

    def rows(self, role: str, layer: int, step: int | None = None) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """All rows of (layer, role) in append order, optionally of one step."""
        cols: dict[str, list[np.ndarray]] = {}
        acts = []
        for r, rows, a in self.appends:
            if r != role or layer not in a:
                continue
            keep = np.ones(len(rows["sample"]), bool) if step is None else rows["step"] == step
            for k, v in rows.items():
                cols.setdefault(k, []).append(v[keep])
            acts.append(a[layer][torch.from_numpy(keep)])
        return {k: np.concatenate(v) for k, v in cols.items()}, torch.cat(acts)


def layer_outputs(module_paths, model, fn):
    """Run ``fn()`` with plain hooks on ``module_paths``; returns path -> list of outputs (one per call)."""
    mods = dict(model.named_modules())
    out: dict[str, list[torch.Tensor]] = {p: [] for p in module_paths}
    handles = [mods[p].register_forward_hook(
        lambda m, i, o, p=p: out[p].append((o if torch.is_tensor(o) else o[0]).detach().clone()))
        for p in module_paths]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return out
