"""Observations from a local LeRobot-format dataset (e.g. LIBERO): one sample per selected frame.

``DatasetConfig`` is the CLI's ``--dataset`` group. ``DatasetSource`` plans the frames to capture (episode ranges,
frame stride; episodes in order, frames in order) and turns batch ``k`` of that plan into an ``Observation`` prepared
the way openpi's PyTorch pi0.5 prepares LIBERO (``LiberoInputs`` and ``preprocessing_pytorch``):

- images: uint8 RGB -> float32 ``x / 255 * 2 - 1`` -> resized with padding to the model's square image size
  (bilinear, ``align_corners=False``, clamped to [-1, 1], padded with -1), channels first. An image already at the
  model's size is passed through unchanged;
- state: normalised with the dataset's statistics (quantile: ``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1``, or
  mean / std), then zero-padded to the model's action dimension;
- prompt: the frame's task string, cleaned as openpi does (strip, ``_`` and newlines to spaces) and tokenized as
  ``BOS + text + "\\n"`` (pi0.5 without the discrete state), with a local Hugging Face tokenizer if one is given,
  else with the offline word hash of ``_synthetic.tokenize`` (enough for random-weight models).

Batch ``k`` holds frames ``[k * B, (k + 1) * B)`` of the plan and samples with those ids, so a resumed capture
continues at the first frame of the first uncommitted batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._dataset_config import EMPTY_CAMERA, DatasetConfig, DatasetError, parse_ranges
from ._lerobot_format import LeRobotDir
from ._synthetic import BOS_ID, Observation, tokenize

__all__ = ["DatasetSource", "ModelInputs", "prepare_images", "resize_with_pad"]

@dataclass(frozen=True)
class ModelInputs:
    """Shapes the model expects, read from it (never from the data)."""

    image_size: int = 224
    """Square image side the model's vision tower takes."""
    action_dim: int = 32
    """Width of the state / action vectors (the state is zero-padded to it)."""
    action_horizon: int = 10
    """Action tokens in the expert's suffix (shape of the initial noise)."""
    vocab_size: int = 257152
    """Vocabulary size (bounds the offline word-hash ids)."""

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelInputs:
        """Read the shapes from ``model.config`` (or ``model.model.config`` for a policy), defaults elsewhere."""
        cfg = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)

        def pick(*names: str, default: int) -> int:
            for n in names:
                v = getattr(cfg, n, None)
                if isinstance(v, int) and not isinstance(v, bool):
                    return v
                if isinstance(v, (tuple, list)) and v and isinstance(v[0], int):
                    return int(v[0])
            return default

        return cls(image_size=pick("image_size", "image_resolution", default=224),
                   action_dim=pick("action_dim", "max_action_dim", "max_state_dim", default=32),
                   action_horizon=pick("action_horizon", "chunk_size", "n_action_steps", default=10),
                   vocab_size=pick("vocab_size", default=257152))


def resize_with_pad(images_BCHW: torch.Tensor, size: int) -> torch.Tensor:
    """Float images in [-1, 1] resized to ``size`` x ``size`` keeping the aspect ratio, padded with -1 (black).

    The same computation as openpi's PyTorch preprocessing: bilinear, ``align_corners=False``, clamped, centred
    padding (the extra pixel of an odd padding at the bottom / right). Images already at the size pass unchanged.
    """
    _, _, h, w = images_BCHW.shape
    if (h, w) == (size, size):
        return images_BCHW
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(images_BCHW, size=(rh, rw), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(out, (left, size - rw - left, top, size - rh - top), mode="constant", value=-1.0)


def prepare_images(frames_BHWC: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB frames -> model pixels (B, 3, size, size) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames_BHWC)).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    return resize_with_pad(x, size)


def _clean(task: str) -> str:
    return task.strip().replace("_", " ").replace("\n", " ")


class DatasetSource:
    """The frames of a LeRobot dataset selected by a ``DatasetConfig``, served as batches of ``Observation``."""

    def __init__(self, cfg: DatasetConfig, inputs: ModelInputs | None = None, batch_size: int = 8,
                 seed: int = 0) -> None:
        if cfg.dataset is None:
            raise DatasetError("DatasetConfig.dataset is None: no dataset to read")
        if batch_size < 1:
            raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.inputs = inputs or ModelInputs()
        """The model's input shapes (set them from the model, ``ModelInputs.of(model)``, before ``batch``)."""
        self.data = LeRobotDir(cfg.dataset)
        cams = self.data.camera_keys
        for key in cfg.cameras:
            if key != EMPTY_CAMERA and key not in cams:
                raise DatasetError(f"camera key {key!r} is not in dataset {cfg.dataset!r}; its cameras are {cams} "
                                   f"(pass --cameras with those keys, '{EMPTY_CAMERA}' for an empty slot)")
        if cfg.state_key not in self.data.features:
            raise DatasetError(f"state key {cfg.state_key!r} is not in dataset {cfg.dataset!r}; its features are "
                               f"{sorted(self.data.features)}")
        self._norm = self._normaliser()
        self.episode_ids = self._select_episodes()
        eps, frames = [], []
        for ep in self.episode_ids:
            f = np.arange(0, self.data.episodes[ep].length, cfg.frame_stride, dtype=np.int64)
            eps.append(np.full(len(f), ep, dtype=np.int64))
            frames.append(f)
        self.episode = np.concatenate(eps) if eps else np.zeros(0, np.int64)
        """(N,) episode of every planned frame, in capture order."""
        self.frame = np.concatenate(frames) if frames else np.zeros(0, np.int64)
        """(N,) frame_index of every planned frame."""
        self._tokenizer = None
        if cfg.tokenizer is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)

    def __len__(self) -> int:
        return len(self.episode)

    @property
    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def describe(self) -> dict[str, Any]:
        """The selection and the dataset facts stored with the capture."""
        return {**self.cfg.describe(), "codebase_version": self.data.version, "fps": self.data.fps,
                "frames": len(self), "episodes_selected": len(self.episode_ids),
                "tasks": {str(k): v for k, v in sorted(self.data.tasks.items())}}

    def _select_episodes(self) -> list[int]:
        have = sorted(self.data.episodes)
        if self.cfg.episodes is None:
            return have
        present = set(have)
        out: list[int] = []
        for a, b in parse_ranges(self.cfg.episodes):
            missing = [e for e in range(a, b + 1) if e not in present]
            if missing:
                span = f"{have[0]}-{have[-1]}" if have else "none"
                raise DatasetError(f"episode {missing[0]} of range {a}-{b} is not in dataset {self.cfg.dataset!r}; it "
                                   f"has {len(have)} episodes ({span})")
            out.extend(e for e in range(a, b + 1) if e not in out)
        return out

    def _normaliser(self):
        mode = self.cfg.normalization
        if mode == "none":
            return lambda x: x
        if self.cfg.stats_path is not None:
            import json
            from pathlib import Path

            raw = json.loads(Path(self.cfg.stats_path).read_text(encoding="utf-8"))
            raw = raw.get("norm_stats", raw)
            st = raw.get("state", raw.get(self.cfg.state_key))
            if st is None:
                raise DatasetError(f"{self.cfg.stats_path!r} has no 'state' / {self.cfg.state_key!r} statistics; "
                                   f"it has {sorted(raw)}")
            stats = {k: np.asarray(v, dtype=np.float64) for k, v in st.items()}
        else:
            stats = self.data.stats(self.cfg.state_key)
        need = ("q01", "q99") if mode == "quantile" else ("mean", "std")
        if any(k not in stats for k in need):
            raise DatasetError(f"{mode} normalisation needs {list(need)} statistics of {self.cfg.state_key!r}; the "
                               f"dataset has {sorted(stats)} (use --normalization mean_std, pass --stats-path, or "
                               "--normalization none)")
        if mode == "quantile":
            lo, hi = stats["q01"], stats["q99"]
            return lambda x: ((x - lo) / (hi - lo + 1e-6) * 2.0 - 1.0).astype(np.float32)
        mean, std = stats["mean"], stats["std"]
        return lambda x: ((x - mean) / (std + 1e-6)).astype(np.float32)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.cfg.prompt_len
        if self._tokenizer is None:
            ids, mask = tokenize([_clean(p) for p in prompts], L + 1, self.inputs.vocab_size)
        else:
            tok = self._tokenizer
            bos = tok.bos_token_id if tok.bos_token_id is not None else BOS_ID
            seqs = [[bos, *tok.encode(_clean(p), add_special_tokens=False), *tok.encode("\n", add_special_tokens=False)]
                    for p in prompts]
            ids = torch.zeros((len(prompts), L + 1), dtype=torch.long)
            mask = torch.zeros((len(prompts), L + 1), dtype=torch.bool)
            for i, s in enumerate(seqs):
                s = s[: L + 1]
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), True
        if bool(mask[:, L].any()):
            i = int(mask[:, L].nonzero()[0, 0])
            raise DatasetError(f"prompt {prompts[i]!r} needs more than --prompt-len {L} tokens; raise --prompt-len")
        return ids[:, :L], mask[:, :L]

    def batch(self, k: int) -> Observation:
        """Batch ``k`` of the plan: frames ``[k * B, (k + 1) * B)`` (the last batch may be shorter)."""
        lo, hi = k * self.batch_size, min((k + 1) * self.batch_size, len(self))
        if not 0 <= lo < hi:
            raise IndexError(f"batch {k} is outside the plan of {self.num_batches} batches")
        episode, frame = self.episode[lo:hi], self.frame[lo:hi]
        B, size = hi - lo, self.inputs.image_size
        image_cams = [c for c in self.cfg.cameras if c != EMPTY_CAMERA
                      and self.data.features[c]["dtype"] == "image"]
        columns = [self.cfg.state_key, *image_cams]
        parts: dict[str, list[Any]] = {}
        for ep in np.unique(episode):  # in plan order: episodes are contiguous and ascending
            sel = episode == ep
            got = self.data.read_frames(int(ep), frame[sel], columns)
            for c in ("task_index", self.cfg.state_key):
                parts.setdefault(c, []).append(np.asarray(got[c]) if c != self.cfg.state_key
                                               else np.asarray(got[c], dtype=np.float64))
            for cam in self.cfg.cameras:
                if cam == EMPTY_CAMERA:
                    continue
                if cam in image_cams:
                    pix = np.stack([self.data.decode_image(cell) for cell in got[cam]])
                else:
                    pix = self.data.decode_video(cam, int(ep), np.asarray(got["timestamp"], dtype=np.float64))
                parts.setdefault(cam, []).append(prepare_images(pix, size))
        images, masks = [], []
        for cam in self.cfg.cameras:
            if cam == EMPTY_CAMERA:
                images.append(torch.full((B, 3, size, size), -1.0))
                masks.append(torch.zeros(B, dtype=torch.bool))
            else:
                images.append(torch.cat(parts[cam]))
                masks.append(torch.ones(B, dtype=torch.bool))
        task = np.concatenate(parts["task_index"]).astype(np.int64)
        unknown = sorted(set(task.tolist()) - set(self.data.tasks))
        if unknown:
            raise DatasetError(f"task_index {unknown[0]} of dataset {self.cfg.dataset!r} is not in its task table")
        prompts = [self.data.tasks[int(t)] for t in task]
        ids, mask = self._tokenize(prompts)
        state = self._norm(np.concatenate(parts[self.cfg.state_key]))
        D = self.inputs.action_dim
        if state.shape[1] > D:
            raise DatasetError(f"state {self.cfg.state_key!r} has {state.shape[1]} dims; the model takes {D}")
        state_BD = torch.zeros(B, D)
        state_BD[:, : state.shape[1]] = torch.from_numpy(np.asarray(state, dtype=np.float32))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        return Observation(
            images=images, img_masks=masks, lang_tokens=ids, lang_masks=mask, state=state_BD,
            noise=torch.randn(B, self.inputs.action_horizon, D, generator=g),
            sample=torch.arange(lo, hi, dtype=torch.long), prompt=prompts,
            episode=torch.from_numpy(episode.copy()), frame=torch.from_numpy(frame.copy()),
            task=torch.from_numpy(task))
