"""Train (or fine-tune) a TopK SAE on one (layer, role) of an actstore store, resumable exactly.

    python examples/train_sae.py --store run.zarr --layer 14 --role decision --steps 1000 \
        --init gemma_scope_layer14.safetensors --checkpoint-dir ckpt/

Batches come from ``store.loader`` (threads) or, with ``--workers N``, from a ``torch.utils.data.DataLoader``
over :class:`actstore.ActDataset`. A checkpoint holds the SAE weights and Adam state (safetensors) and the step
and loader position (JSON); ``--resume`` continues from it with the very batches an uninterrupted run would see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import actstore
from actstore.sae import TopKSAE, explained_variance, load_checkpoint, save_checkpoint

log = logging.getLogger("train_sae")


@dataclass(frozen=True)
class TrainConfig:
    """One SAE training run."""

    store: str
    """Path of the store."""
    layer: int = 14
    """Layer to train on."""
    role: str = "decision"
    """Row role to train on."""
    steps: int = 1000
    """Optimizer steps (batches) in total, across resumes."""
    batch_size: int = 4096
    """Rows per batch."""
    k: int = 32
    """Active latents per row."""
    expansion: int = 8
    """Latents = expansion * d (ignored with --init)."""
    lr: float = 2e-4
    """Adam learning rate."""
    seed: int = 0
    """Seed of the loader shuffle and of the initial weights."""
    init: str | None = None
    """Pre-trained weights (.safetensors or .npz with W_enc, W_dec, b_enc, b_dec, optional threshold)."""
    checkpoint_dir: str | None = None
    """Where to write checkpoints (None: none)."""
    checkpoint_every: int = 500
    """Steps between checkpoints."""
    resume: bool = False
    """Continue from the checkpoint in checkpoint_dir."""
    workers: int = 0
    """0: the loader's own threads; N > 0: a DataLoader with N worker processes over ActDataset."""
    device: str = "cpu"
    """Training device."""
    log_every: int = 50
    """Steps between log lines."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size <= 0 or self.k <= 0 or self.checkpoint_every <= 0:
            raise ValueError("steps must be >= 0 and batch_size, k, checkpoint_every positive")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")


def train(cfg: TrainConfig, store: actstore.ActStore | None = None) -> dict[str, Any]:
    """Run the training; returns the last step's metrics and the SAE."""
    store = store or actstore.ActStore.open(cfg.store)
    device = torch.device(cfg.device)
    opts: dict[str, Any] = {"batch_size": cfg.batch_size, "seed": cfg.seed, "dtype": "float32"}
    if cfg.workers:
        data = actstore.ActDataset(store, cfg.layer, cfg.role, **opts)
    else:
        if device.type == "cuda":
            opts.update(pin_memory=True, device=cfg.device)
        data = store.loader(cfg.layer, cfg.role, **opts)
    d = store[cfg.layer, cfg.role].shape[1]
    sae = TopKSAE.from_pretrained(cfg.init, cfg.k) if cfg.init else TopKSAE(d, cfg.expansion * d, cfg.k, seed=cfg.seed)
    sae.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    step, seen = 0, 0
    if cfg.resume and (Path(cfg.checkpoint_dir or "") / "state.json").exists():
        state = load_checkpoint(cfg.checkpoint_dir or "", sae, opt)
        step = int(state["step"])
        if cfg.workers:
            data.load_state_dict(state["loader"])
            seen = int(state["loader"]["batch"])
        else:
            data.load_state_dict(state["loader"])
    metrics: dict[str, Any] = {"step": step}

    def checkpoint() -> None:
        if cfg.checkpoint_dir is None:
            return
        loader_state = data.state_dict(seen) if cfg.workers else data.state_dict()
        save_checkpoint(cfg.checkpoint_dir, sae, opt, {"step": step, "loader": loader_state, "config": repr(cfg)})

    while step < cfg.steps:
        if cfg.workers:
            batches: Any = DataLoader(data, batch_size=None, num_workers=cfg.workers)
        else:
            batches = data
        for x in batches:
            x_BD = x.to(device, non_blocking=True).float()
            xhat_BD, _ = sae(x_BD)
            loss = (xhat_BD - x_BD).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sae.normalize_decoder()
            step += 1
            seen += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                with torch.no_grad():
                    metrics = {"step": step, "mse": float(loss), "explained_variance": explained_variance(x_BD, xhat_BD)}
                log.info("step %d  mse %.5g  explained variance %.4f", step, metrics["mse"], metrics["explained_variance"])
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint()
            if step >= cfg.steps:
                break
        else:  # the epoch ended
            if cfg.workers:
                data.set_epoch(data.epoch + 1)
                seen = 0
    metrics["sae"] = sae
    return metrics


def main(cfg: TrainConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = train(cfg)
    print(f"done at step {out['step']}: mse {out.get('mse', float('nan')):.5g}, "
          f"explained variance {out.get('explained_variance', float('nan')):.4f}")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(TrainConfig))
