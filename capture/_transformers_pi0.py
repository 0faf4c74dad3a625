"""transformers' own pi0 (``transformers.models.pi0.PI0ForConditionalGeneration``): tiny random build and one batch.

Layout: PaliGemma layers at ``model.vlm.language_model.layers.{i}``, the expert (a plain ``GemmaModel``, no
lm_head, no AdaRMS) at ``model.dit.layers.{i}``. The prefix is ``[image placeholders][prompt]`` in ``input_ids``;
the suffix is ``[state token][H action tokens]``. Decoder layers return a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._synthetic import Observation

__all__ = ["TinyPI0Config", "build_tiny_pi0", "run_pi0", "pi0_input_ids"]


@dataclass(frozen=True)
class TinyPI0Config:
    """Sizes of a tiny random transformers PI0 (built offline; weights are random)."""

    vlm_width: int = 64
    """PaliGemma text width."""
    expert_width: int = 32
    """Expert (dit) width."""
    depth: int = 18
    """Layers in each stack (18, so 6/10/14 exist)."""
    vocab_size: int = 512
    """Text vocabulary; the image placeholder id is ``vocab_size``."""
    image_size: int = 224
    """Square image side."""
    patch_size: int = 14
    """Vision patch side (224/14 = 256 tokens per camera)."""
    action_horizon: int = 10
    """``chunk_size``: action tokens after the state token."""
    seed: int = 0
    """Seed of the random initialisation."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if min(self.vlm_width, self.expert_width, self.depth, self.vocab_size, self.action_horizon) < 1:
            raise ValueError(f"TinyPI0Config sizes must be >= 1: {self}")

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tiny_pi0(cfg: TinyPI0Config | None = None) -> nn.Module:
    """A randomly initialised ``PI0ForConditionalGeneration`` with 8 heads / 1 kv head like the real model."""
    from transformers import PI0Config, PI0ForConditionalGeneration

    cfg = cfg or TinyPI0Config()
    gemma = dict(model_type="gemma", num_hidden_layers=cfg.depth, num_attention_heads=8, num_key_value_heads=1,
                 head_dim=8, vocab_size=cfg.vocab_size + 1)
    pcfg = PI0Config(
        vlm_config=dict(
            model_type="paligemma",
            text_config=dict(gemma, hidden_size=cfg.vlm_width, intermediate_size=2 * cfg.vlm_width),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, patch_size=cfg.patch_size,
                               image_size=cfg.image_size, vision_use_head=False),
            projection_dim=cfg.vlm_width, image_token_id=cfg.vocab_size),
        dit_config=dict(gemma, hidden_size=cfg.expert_width, intermediate_size=2 * cfg.expert_width),
        chunk_size=cfg.action_horizon, num_inference_steps=10)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = PI0ForConditionalGeneration(pcfg)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def _image_token_id(model: nn.Module) -> int:
    return int(model.config.vlm_config.image_token_id)


def pi0_input_ids(model: nn.Module, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``input_ids`` ([image placeholders][prompt]), attention mask and the prompt's offset in the prefix."""
    vc = model.config.vlm_config.vision_config
    n_img = (vc.image_size // vc.patch_size) ** 2
    B, n_cams = obs.lang_tokens.shape[0], len(obs.images)
    dev = obs.lang_tokens.device
    img_ids = torch.full((B, n_cams * n_img), _image_token_id(model), dtype=torch.long, device=dev)
    img_mask = torch.cat([m[:, None].expand(B, n_img) for m in obs.img_masks], dim=1)
    ids = torch.cat((img_ids, obs.lang_tokens), dim=1)
    mask = torch.cat((img_mask, obs.lang_masks.bool()), dim=1).long()
    return ids, mask, n_cams * n_img


@torch.no_grad()
def run_pi0(model: nn.Module, obs: Observation, num_steps: int) -> torch.Tensor:
    """``sample_actions`` for one batch of observations."""
    ids, mask, _ = pi0_input_ids(model, obs)
    dtype = next(model.parameters()).dtype
    cfg = model.config
    noise = obs.noise
    if noise.shape[-1] != cfg.max_action_dim:
        noise = torch.nn.functional.pad(noise, (0, cfg.max_action_dim - noise.shape[-1]))
    state = obs.state
    if state.shape[-1] != cfg.max_state_dim:
        state = torch.nn.functional.pad(state, (0, cfg.max_state_dim - state.shape[-1]))
    return model.sample_actions(
        state=state.to(dtype), input_ids=ids, pixel_values=torch.stack(obs.images, dim=1).to(dtype),
        pixel_attention_mask=torch.stack(obs.img_masks, dim=1), attention_mask=mask,
        noise=noise.to(dtype), num_steps=num_steps)
