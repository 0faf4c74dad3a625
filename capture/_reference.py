"""A small, randomly initialised pi0.5 policy laid out like openpi's ``PI0Pytorch``.

The weights are random (drawn from ``ReferenceConfig.seed``): the model computes nothing meaningful. What it does
reproduce is the structure that capture code depends on, so code written against it works on the real model:

- module paths: ``paligemma_with_expert.paligemma.model.language_model.layers.{i}`` (PaliGemma decoder),
  ``paligemma_with_expert.gemma_expert.model.layers.{i}`` (action expert), the two final norms, both ``lm_head``
  modules (the expert's is untrained by design, as in the real checkpoint), ``action_in_proj``,
  ``action_out_proj``, ``time_mlp_in`` and ``time_mlp_out``;
- decoder layers take everything after ``hidden_states`` as keywords, including ``adarms_cond=``, and return a
  1-tuple ``(hidden_states,)`` as openpi's patched Gemma does;
- expert norms are AdaRMS: ``norm(x, cond) -> (normed, gate)`` with ``dense(cond) -> (scale, shift, gate)``;
- the prefix is ``[camera 0: 256][camera 1: 256]... [prompt: L]`` and runs once into a KV cache; the suffix is the
  ``action_horizon`` action tokens and runs through the expert once per denoising step (``sample_actions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferenceConfig", "ReferencePi05", "AdaRMSNorm"]


@dataclass(frozen=True)
class ReferenceConfig:
    """Sizes of the reference pi0.5 policy (defaults: tiny, CPU-friendly; 18 layers like the real model)."""

    vlm_width: int = 64
    """Width of the PaliGemma language model (2048 in the real model)."""
    expert_width: int = 32
    """Width of the action expert (1024 in the real model)."""
    depth: int = 18
    """Decoder layers in each stack (18 in the real model, so layers 6/10/14 exist)."""
    num_heads: int = 8
    """Attention heads, shared by both stacks (the real model requires 8)."""
    head_dim: int = 8
    """Size of one attention head (256 in the real model)."""
    mlp_ratio: int = 2
    """MLP hidden size as a multiple of the width."""
    vocab_size: int = 512
    """Vocabulary of the (tied) PaliGemma embedding and both lm_heads."""
    vision_width: int = 32
    """Width of the one-layer patch-embedding stand-in for SigLIP."""
    image_size: int = 224
    """Square image side in pixels."""
    patch_size: int = 14
    """Patch side: 224 / 14 gives 256 tokens per camera, as in the real model."""
    action_horizon: int = 10
    """Action tokens in the suffix (10 for openpi pi05_libero)."""
    action_dim: int = 32
    """Width of an action vector."""
    seed: int = 0
    """Seed of the random initialisation."""

    def __post_init__(self) -> None:
        for name in ("vlm_width", "expert_width", "depth", "num_heads", "head_dim", "mlp_ratio", "vocab_size",
                     "vision_width", "action_horizon", "action_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReferenceConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def tokens_per_image(self) -> int:
        """Prefix tokens produced by one camera."""
        return (self.image_size // self.patch_size) ** 2


class AdaRMSNorm(nn.Module):
    """RMS norm; adaptive when ``cond_dim`` is set: ``forward(x, cond) -> (normed, gate)``.

    Non-adaptive: ``(normed * (1 + weight), None)``. Adaptive: ``dense(cond)`` is split into (scale, shift, gate), in
    that order, and the result is ``(normed * (1 + scale) + shift, gate)``; the adaptive norm has no ``weight``.
    ``x`` may be (B, T, W) with cond (B, C), or (N, W) with cond (N, C).
    """

    def __init__(self, dim: int, cond_dim: int | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim) if cond_dim is not None else None
        if self.dense is None:
            self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.dense is None:
            return (normed * (1.0 + self.weight.float())).to(x.dtype), None
        if cond is None:
            return normed.to(x.dtype), None
        mod = self.dense(cond.to(self.dense.weight.dtype))
        if x.ndim == 3:
            mod = mod.unsqueeze(1)
        scale, shift, gate = mod.chunk(3, dim=-1)
        return (normed * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class KVCache:
    """Per-layer keys and values of the prefix, written once and read by every denoising step."""

    def __init__(self) -> None:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rotary(pos_BT: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=pos_BT.device, dtype=torch.float32) / head_dim))
    ang_BTH = pos_BT.float()[..., None] * inv
    emb = torch.cat((ang_BTH, ang_BTH), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int, head_dim: int, layer_idx: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.layer_idx = num_heads, head_dim, layer_idx
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, head_dim, bias=False)  # one kv head, as in Gemma-2B / gemma_300m
        self.v_proj = nn.Linear(width, head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def forward(self, x_BTW, mask_B1QK, rope, cache: KVCache | None, use_cache: bool) -> torch.Tensor:
        B, T, _ = x_BTW.shape
        cos, sin = (r[:, None] for r in rope)
        q = self.q_proj(x_BTW).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x_BTW).view(B, T, 1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x_BTW).view(B, T, 1, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None and use_cache:
            cache.kv[self.layer_idx] = (k, v)
        elif cache is not None and self.layer_idx in cache.kv:  # suffix attends to the cached prefix
            pk, pv = cache.kv[self.layer_idx]
            k, v = torch.cat((pk.to(k.dtype), k), dim=2), torch.cat((pv.to(v.dtype), v), dim=2)
        k = k.expand(B, self.num_heads, k.shape[2], self.head_dim)
        v = v.expand(B, self.num_heads, v.shape[2], self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1QK.clamp(min=torch.finfo(q.dtype).min).to(q.dtype))
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Gemma decoder layer with optional AdaRMS gating; returns ``(hidden_states,)`` like openpi."""

    def __init__(self, width: int, cfg: ReferenceConfig, layer_idx: int, cond_dim: int | None) -> None:
        super().__init__()
        self.self_attn = Attention(width, cfg.num_heads, cfg.head_dim, layer_idx)
        self.mlp = MLP(width, width * cfg.mlp_ratio)
        self.input_layernorm = AdaRMSNorm(width, cond_dim)
        self.post_attention_layernorm = AdaRMSNorm(width, cond_dim)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None,
                use_cache=False, adarms_cond=None, **kwargs) -> tuple[torch.Tensor]:
        normed, gate = self.input_layernorm(hidden_states, adarms_cond)
        y = self.self_attn(normed, attention_mask, position_embeddings, past_key_values, use_cache)
        x = hidden_states + (y if gate is None else y * gate)
        normed, gate = self.post_attention_layernorm(x, adarms_cond)
        y = self.mlp(normed)
        return (x + (y if gate is None else y * gate),)


class GemmaStack(nn.Module):
    """Decoder stack: ``embed_tokens`` (or None), ``layers.{i}``, final ``norm``."""

    def __init__(self, width: int, cfg: ReferenceConfig, *, embed: bool, cond_dim: int | None) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, width) if embed else None
        self.layers = nn.ModuleList(DecoderLayer(width, cfg, i, cond_dim) for i in range(cfg.depth))
        self.norm = AdaRMSNorm(width, cond_dim)

    def forward(self, inputs_embeds, attention_mask, position_ids, past_key_values=None, use_cache=False,
                adarms_cond=None) -> torch.Tensor:
        rope = _rotary(position_ids, self.head_dim, inputs_embeds.dtype)
        h = inputs_embeds
        for layer in self.layers:
            out = layer(h, attention_mask=attention_mask, position_embeddings=rope, past_key_values=past_key_values,
                        use_cache=use_cache, adarms_cond=adarms_cond)
            h = out[0]
        return self.norm(h, adarms_cond)[0]


class PatchEmbed(nn.Module):
    """Stand-in for SigLIP: one strided convolution plus learned positions (B, 3, S, S) -> (B, N, vision_width)."""

    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.vision_width, cfg.patch_size, stride=cfg.patch_size)
        self.position = nn.Parameter(torch.randn(cfg.tokens_per_image, cfg.vision_width) * 0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch(pixels).flatten(2).transpose(1, 2) + self.position


class PaliGemmaModel(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.vision_tower = PatchEmbed(cfg)
        self.multi_modal_projector = nn.Linear(cfg.vision_width, cfg.vlm_width)
        self.language_model = GemmaStack(cfg.vlm_width, cfg, embed=True, cond_dim=None)


class PaliGemma(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.model = PaliGemmaModel(cfg)
        self.lm_head = nn.Linear(cfg.vlm_width, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.model.language_model.embed_tokens.weight  # tied, as in PaliGemma


class GemmaExpert(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.model = GemmaStack(cfg.expert_width, cfg, embed=False, cond_dim=cfg.expert_width)
        self.lm_head = nn.Linear(cfg.expert_width, cfg.vocab_size, bias=False)  # never trained in the real model


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.paligemma = PaliGemma(cfg)
        self.gemma_expert = GemmaExpert(cfg)


def _additive(allowed_BQK: torch.Tensor) -> torch.Tensor:
    """Boolean (B, Q, K) -> additive (B, 1, Q, K) float32 mask (openpi's -2.3819763e38 for blocked pairs)."""
    out = torch.zeros(allowed_BQK.shape, dtype=torch.float32, device=allowed_BQK.device)
    return out.masked_fill(~allowed_BQK, -2.3819763e38)[:, None]


def sinusoid(time_B: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sine-cosine embedding of the flow-matching time, as in openpi (float32)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=time_B.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * time_B.float()[:, None]
    return torch.cat((angle.sin(), angle.cos()), dim=-1)


class ReferencePi05(nn.Module):
    """Random pi0.5 policy with openpi's module paths and ``sample_actions`` step loop (see module docstring)."""

    def __init__(self, cfg: ReferenceConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg or ReferenceConfig()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        try:
            self.paligemma_with_expert = PaliGemmaWithExpert(cfg)
            self.action_in_proj = nn.Linear(cfg.action_dim, cfg.expert_width)
            self.action_out_proj = nn.Linear(cfg.expert_width, cfg.action_dim)
            self.time_mlp_in = nn.Linear(cfg.expert_width, cfg.expert_width)
            self.time_mlp_out = nn.Linear(cfg.expert_width, cfg.expert_width)
            with torch.no_grad():  # random, non-trivial norm scales (zero in a fresh real model, trained later)
                for name, p in self.named_parameters():
                    if name.endswith("norm.weight"):
                        p.normal_(0.0, 0.1)
        finally:
            torch.random.set_rng_state(gen_state)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    def embed_prefix(self, images, img_masks, lang_tokens, lang_masks) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings (B, n_cams*256 + L, W) and pad mask (B, n_cams*256 + L)."""
        pg = self.paligemma_with_expert.paligemma.model
        n_img = self.config.tokens_per_image
        embs, pads = [], []
        for img_BCHW, mask_B in zip(images, img_masks, strict=True):
            feats = pg.multi_modal_projector(pg.vision_tower(img_BCHW.to(self.dtype)))
            embs.append(feats)
            pads.append(mask_B[:, None].expand(-1, n_img))
        lang = pg.language_model.embed_tokens(lang_tokens) * math.sqrt(self.config.vlm_width)
        embs.append(lang.to(self.dtype))
        pads.append(lang_masks.bool())
        return torch.cat(embs, dim=1), torch.cat(pads, dim=1)

    def embed_suffix(self, x_t_BHA: torch.Tensor, time_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action-token embeddings (B, H, We) and the AdaRMS conditioning (B, We) for one denoising step."""
        temb = sinusoid(time_B, self.config.expert_width).to(self.dtype)
        cond_BW = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
        return self.action_in_proj(x_t_BHA.to(self.dtype)), cond_BW

    def denoise_step(self, prefix_pad_BP, cache: KVCache, x_t_BHA, time_B) -> torch.Tensor:
        suffix_BHW, cond_BW = self.embed_suffix(x_t_BHA, time_B)
        B, H, _ = suffix_BHW.shape
        allowed = torch.cat((prefix_pad_BP[:, None, :].expand(B, H, -1),
                             torch.ones(B, H, H, dtype=torch.bool, device=suffix_BHW.device)), dim=2)
        pos_BH = prefix_pad_BP.sum(-1, keepdim=True) + torch.arange(H, device=suffix_BHW.device)
        out_BHW = self.paligemma_with_expert.gemma_expert.model(
            suffix_BHW, _additive(allowed), pos_BH, past_key_values=cache, use_cache=False, adarms_cond=cond_BW)
        return self.action_out_proj(out_BHW[:, -H:]).float()

    @torch.no_grad()
    def sample_actions(self, images, img_masks, lang_tokens, lang_masks, state=None, noise=None,
                       num_steps: int = 10) -> torch.Tensor:
        """Flow-matching inference: one prefix pass, then ``num_steps`` expert passes at t = 1, 1-dt, ..."""
        del state  # pi0.5 (discrete_state_input=False) does not read the state
        B, device = lang_tokens.shape[0], lang_tokens.device
        if noise is None:
            noise = torch.randn(B, self.config.action_horizon, self.config.action_dim, device=device)
        prefix_BPW, pad_BP = self.embed_prefix(images, img_masks, lang_tokens, lang_masks)
        allowed = pad_BP[:, None, :] & pad_BP[:, :, None]
        cache = KVCache()
        self.paligemma_with_expert.paligemma.model.language_model(
            prefix_BPW, _additive(allowed), pad_BP.long().cumsum(-1) - 1, past_key_values=cache, use_cache=True)
        x_t = noise.float()
        dt = -1.0 / num_steps
        for step in range(num_steps):
            time_B = torch.full((B,), 1.0 + step * dt, dtype=torch.float32, device=device)
            x_t = x_t + dt * self.denoise_step(pad_BP, cache, x_t, time_B)
        return x_t
