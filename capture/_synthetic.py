"""Synthetic observations: random camera images plus LIBERO-style task instructions, tokenized offline.

There is no PaliGemma tokenizer offline, so prompts are turned into ids by a small deterministic word hash
(``tokenize``). The ids only need to be stable: the reference model's weights are random anyway.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["LIBERO_TASKS", "SyntheticConfig", "Observation", "tokenize", "synthetic_batches"]

LIBERO_TASKS: tuple[str, ...] = (
    "put the black bowl on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "open the middle drawer of the cabinet",
    "put the bowl on the stove",
    "put the wine bottle on top of the cabinet",
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "turn on the stove and put the moka pot on it",
    "put the cream cheese in the bowl",
    "pick up the ketchup and place it in the basket",
    "push the plate to the front of the stove",
    "put the yellow and white mug in the microwave and close it",
    "stack the left bowl on the right bowl and place them in the tray",
)
"""Task instructions in the style of the LIBERO benchmark suites."""

PAD_ID, BOS_ID, NEWLINE_ID, FIRST_WORD_ID = 0, 2, 3, 4


def tokenize(prompts: list[str], max_len: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``BOS + words + "\\n"``, right-padded: ids (S, max_len) int64 and mask (S, max_len) bool (True = token).

    Words map to ``4 + crc32(word) % (vocab_size - 4)``; prompts longer than ``max_len`` are truncated.
    """
    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"vocab_size must be > {FIRST_WORD_ID}, got {vocab_size}")
    ids = torch.full((len(prompts), max_len), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), max_len), dtype=torch.bool)
    for i, text in enumerate(prompts):
        words = [FIRST_WORD_ID + zlib.crc32(w.encode()) % (vocab_size - FIRST_WORD_ID) for w in text.split()]
        seq = ([BOS_ID, *words, NEWLINE_ID])[:max_len]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = True
    return ids, mask


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the synthetic observation stream."""

    batch_size: int = 8
    """Samples per batch."""
    num_cameras: int = 2
    """Camera slots in the prefix (LIBERO fills two)."""
    image_size: int = 224
    """Square image side in pixels."""
    prompt_len: int = 32
    """Prompt tokens per sample, right-padded (the instruction span)."""
    action_horizon: int = 10
    """Action tokens per sample."""
    action_dim: int = 32
    """Width of an action vector (and of the state)."""
    vocab_size: int = 512
    """Token ids are drawn below this."""
    seed: int = 0
    """Seed of the stream; batch i is reproducible on its own (for resume)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_cameras", "image_size", "prompt_len", "action_horizon", "action_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Observation:
    """One batch of policy inputs plus the per-sample context stored next to the activations."""

    images: list[torch.Tensor]
    """One (B, 3, S, S) float tensor in [-1, 1] per camera."""
    img_masks: list[torch.Tensor]
    """One (B,) bool tensor per camera (False = missing camera)."""
    lang_tokens: torch.Tensor
    """(B, L) int64 prompt ids, right-padded."""
    lang_masks: torch.Tensor
    """(B, L) bool prompt mask."""
    state: torch.Tensor
    """(B, action_dim) robot state."""
    noise: torch.Tensor
    """(B, H, action_dim) initial flow-matching noise."""
    sample: torch.Tensor
    """(B,) int64 global sample ids."""
    prompt: list[str]
    """Prompt text per sample."""
    episode: torch.Tensor
    """(B,) int64 episode index."""
    frame: torch.Tensor
    """(B,) int64 frame index within the episode."""
    task: torch.Tensor
    """(B,) int64 index into ``LIBERO_TASKS``."""

    def to(self, device: torch.device | str) -> Observation:
        """A copy with the model inputs on ``device`` (the context stays on the CPU)."""
        return Observation(
            images=[x.to(device) for x in self.images], img_masks=[m.to(device) for m in self.img_masks],
            lang_tokens=self.lang_tokens.to(device), lang_masks=self.lang_masks.to(device),
            state=self.state.to(device), noise=self.noise.to(device), sample=self.sample, prompt=self.prompt,
            episode=self.episode, frame=self.frame, task=self.task)


def make_batch(cfg: SyntheticConfig, index: int) -> Observation:
    """Batch number ``index`` of the stream (deterministic in ``cfg.seed`` and ``index``)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
    B, S = cfg.batch_size, cfg.image_size
    task = torch.randint(0, len(LIBERO_TASKS), (B,), generator=g)
    prompts = [LIBERO_TASKS[int(t)] for t in task]
    ids, mask = tokenize(prompts, cfg.prompt_len, cfg.vocab_size)
    sample = torch.arange(index * B, (index + 1) * B, dtype=torch.long)
    return Observation(
        images=[torch.rand(B, 3, S, S, generator=g) * 2 - 1 for _ in range(cfg.num_cameras)],
        img_masks=[torch.ones(B, dtype=torch.bool) for _ in range(cfg.num_cameras)],
        lang_tokens=ids, lang_masks=mask,
        state=torch.randn(B, cfg.action_dim, generator=g),
        noise=torch.randn(B, cfg.action_horizon, cfg.action_dim, generator=g),
        sample=sample, prompt=prompts, episode=sample // 50, frame=sample % 50, task=task)


def synthetic_batches(cfg: SyntheticConfig, start: int = 0, stop: int | None = None) -> Iterator[Observation]:
    """Batches ``start, start+1, ... stop-1`` (endless when ``stop`` is None)."""
    i = start
    while stop is None or i < stop:
        yield make_batch(cfg, i)
        i += 1
