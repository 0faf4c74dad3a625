"""pi0 / pi0.5 laid out like openpi's ``PI0Pytorch``: the reference model, openpi's ``PI0Pytorch``, lerobot's
``PI0Pytorch`` / ``PI05Pytorch`` cores and their policies (``.model``).

What the adapter takes from the model, never from the observation:

- camera slots: openpi always feeds its three cameras ``base_0_rgb``, ``left_wrist_0_rgb``, ``right_wrist_0_rgb``;
  a lerobot policy its ``config.image_features``. Slots the observation lacks are fed as upstream feeds a missing
  camera: an image of -1 with a False mask (they stay in the prefix, masked);
- tokens per image: ``(image_size // patch_size) ** 2`` of the model's SigLIP config (openpi and lerobot resize
  every camera to that size inside, whatever size comes in);
- where the prompt starts: ``slots * tokens_per_image``, checked against the prefix each PaliGemma layer actually
  sees (its token count must be that plus the prompt length, else the capture stops with a ``SiteError``).
"""

from __future__ import annotations

import inspect
import sys
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ._errors import ModelSpecError, SiteError
from ._layouts import pi_prefix
from ._reference import ReferencePi05
from ._sites import BatchContext, RoleSpec, Selection, decision, full
from ._synthetic import Observation

__all__ = ["OPENPI_CAMERAS", "pi_core", "pi_flavour", "tokens_per_image", "camera_slots",
           "pi_inputs", "pi_adapter_parts", "cast_like_upstream", "prefix_prompt", "prefix_full"]

OPENPI_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
"""The camera slots openpi's ``PI0Pytorch`` always feeds, in prefix order."""


def pi_core(model: nn.Module) -> nn.Module:
    """The module holding ``paligemma_with_expert`` (a lerobot policy wraps it in ``.model``)."""
    prefix = pi_prefix(model)
    if prefix is not None:
        return model if prefix == "" else model.model
    raise ModelSpecError(f"{type(model).__name__} has no 'paligemma_with_expert' (nor '.model.paligemma_with_expert')")


def pi_flavour(core: nn.Module) -> str:
    """``reference``, ``openpi`` (``sample_actions(device, observation, ...)``), ``lerobot`` or ``pi`` (other)."""
    if isinstance(core, ReferencePi05):
        return "reference"
    params = list(inspect.signature(core.sample_actions).parameters)
    if params and params[0] == "device":
        return "openpi"
    return "lerobot" if type(core).__module__.startswith("lerobot") else "pi"


def tokens_per_image(core: nn.Module) -> int:
    """Prefix tokens per camera, from the model's vision config."""
    if isinstance(core, ReferencePi05):
        return core.config.tokens_per_image
    try:
        vc = core.paligemma_with_expert.paligemma.config.vision_config
        return (int(vc.image_size) // int(vc.patch_size)) ** 2
    except AttributeError as e:
        raise ModelSpecError(f"{type(core).__name__}: cannot read image_size / patch_size from "
                             f"paligemma_with_expert.paligemma.config.vision_config ({e})") from e


def camera_slots(model: nn.Module, obs: Observation) -> int:
    """How many camera slots the model's prefix has for this observation (missing ones are masked)."""
    core = pi_core(model)
    n = len(obs.images)
    flavour = pi_flavour(core)
    if flavour == "openpi":
        slots = len(OPENPI_CAMERAS)
    elif flavour == "lerobot" and core is not model and getattr(model.config, "image_features", None):
        slots = len(model.config.image_features)
    else:
        return n
    if n > slots:
        raise ModelSpecError(f"the observation has {n} cameras but {type(model).__name__} takes at most {slots}"
                             + (f" ({', '.join(OPENPI_CAMERAS)})" if flavour == "openpi" else "")
                             + "; drop the extra cameras")
    if n < 1:
        raise ModelSpecError("the observation has no camera image; at least one is needed")
    return slots


def _image_size(core: nn.Module) -> int | None:
    res = getattr(getattr(core, "config", None), "image_resolution", None)
    return int(res[0]) if res is not None else None


def pi_inputs(model: nn.Module, obs: Observation) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images and masks of every camera slot, missing cameras as images of -1 with a False mask.

    lerobot's cores take images already at ``config.image_resolution``: they are resized with lerobot's own
    ``resize_with_pad_torch`` (what its policy does); openpi resizes inside ``sample_actions``.
    """
    core = pi_core(model)
    images, masks = list(obs.images), [m.bool() for m in obs.img_masks]
    if pi_flavour(core) == "lerobot":
        size = _image_size(core)
        resize = getattr(sys.modules[type(core).__module__], "resize_with_pad_torch", None)
        if size is not None and resize is not None:
            images = [img if tuple(img.shape[-2:]) == (size, size)
                      else resize(img.permute(0, 2, 3, 1), size, size).permute(0, 3, 1, 2) for img in images]
    for _ in range(camera_slots(model, obs) - len(images)):
        images.append(torch.full_like(images[0], -1.0))
        masks.append(torch.zeros_like(masks[0]))
    return images, masks


def _horizon(core: nn.Module, obs: Observation) -> int:
    cfg = getattr(core, "config", None)
    for name in ("action_horizon", "chunk_size"):
        if cfg is not None and isinstance(getattr(cfg, name, None), int):
            return int(getattr(cfg, name))
    return int(obs.noise.shape[1])


def pi_context(model: nn.Module, obs: Observation) -> BatchContext:
    core = pi_core(model)
    n_img = tokens_per_image(core)
    _, masks = pi_inputs_masks(model, obs)
    B = obs.lang_tokens.shape[0]
    prompt = obs.lang_masks.cpu().bool()
    pad = torch.cat([m.cpu()[:, None].expand(B, n_img) for m in masks] + [prompt], 1)
    return BatchContext(
        sample=obs.sample, prompt_mask=prompt, image_offset=len(masks) * n_img, action_horizon=_horizon(core, obs),
        pad_mask=pad, prompt=obs.prompt, prompt_ids=obs.lang_tokens.cpu(),
        extra={"episode": obs.episode, "frame": obs.frame, "task": obs.task})


def pi_inputs_masks(model: nn.Module, obs: Observation) -> tuple[int, list[torch.Tensor]]:
    """Slot count and masks only (no image resize): what the context needs."""
    slots = camera_slots(model, obs)
    masks = [m.bool() for m in obs.img_masks]
    masks += [torch.zeros_like(masks[0]) for _ in range(slots - len(masks))]
    return slots, masks


def pi_run(model: nn.Module, obs: Observation, num_steps: int) -> Any:
    """One ``sample_actions`` call, fed the way the model's own package feeds it."""
    core = pi_core(model)
    images, masks = pi_inputs(model, obs)
    if pi_flavour(core) == "openpi":  # sample_actions(device, observation, noise, num_steps)
        observation = SimpleNamespace(
            images=dict(zip(OPENPI_CAMERAS, images, strict=False)),
            image_masks=dict(zip(OPENPI_CAMERAS, masks, strict=False)),
            state=obs.state, tokenized_prompt=obs.lang_tokens, tokenized_prompt_mask=obs.lang_masks,
            token_ar_mask=None, token_loss_mask=None)
        return core.sample_actions(obs.lang_tokens.device, observation, noise=obs.noise, num_steps=num_steps)
    params = list(inspect.signature(core.sample_actions).parameters)
    kw: dict[str, Any] = {"noise": obs.noise, "num_steps": num_steps}
    if "state" in params:
        kw["state"] = obs.state
    with torch.no_grad():
        return core.sample_actions(images, masks, obs.lang_tokens, obs.lang_masks, **kw)


def prefix_prompt(num_tokens: int, ctx: BatchContext) -> Selection:
    """The prompt tokens of the prefix: ``[image_offset, image_offset + L)`` where the prompt mask is True.

    The prefix is ``[camera tokens][prompt]``; a layer that sees a different number of tokens than the adapter
    counted (cameras x tokens per image + L) would make these rows something else, so it is refused.
    """
    if ctx.prompt_mask is None:
        raise SiteError("instruction selector needs BatchContext.prompt_mask; none was given")
    L = int(ctx.prompt_mask.shape[1])
    if ctx.image_offset + L != num_tokens:
        raise SiteError(f"the PaliGemma layer saw a prefix of {num_tokens} tokens, but the adapter counted "
                        f"{ctx.image_offset} image tokens + {L} prompt tokens = {ctx.image_offset + L}; the model "
                        "embeds a different number of tokens per camera or camera slots than its config says")
    return Selection(ctx.image_offset, num_tokens, ctx.prompt_mask.bool())


def prefix_full(num_tokens: int, ctx: BatchContext) -> Selection:
    """Every non-pad prefix token (masked cameras and prompt padding dropped); refused if the count is off."""
    if ctx.pad_mask is None or ctx.pad_mask.shape[1] != num_tokens:
        width = None if ctx.pad_mask is None else ctx.pad_mask.shape[1]
        raise SiteError(f"the PaliGemma layer saw a prefix of {num_tokens} tokens, but the adapter's pad mask "
                        f"covers {width}")
    return full(num_tokens, ctx)


def pi_adapter_parts() -> dict[str, Any]:
    """Roles, run and context shared by every pi-layout adapter."""
    roles = {"decision": RoleSpec("expert", decision, stepped=True), "instruction": RoleSpec("vlm", prefix_prompt),
             "full": RoleSpec("vlm", prefix_full), "suffix": RoleSpec("expert", full, stepped=True)}
    return {"roles": roles, "run": pi_run, "context": pi_context}


def cast_like_upstream(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    """Move to ``device`` and cast as the model's own package does.

    openpi / lerobot: ``paligemma_with_expert.to_bfloat16_for_selected_params`` (their own method: the norms and
    SigLIP's patch and position embeddings stay float32) and the action / time projections stay float32, as
    upstream builds them under ``dtype="bfloat16"``. Other models: a plain ``.to(dtype)``.
    """
    model = model.to(device=device)
    try:
        core = pi_core(model)
    except ModelSpecError:
        return model.to(dtype=dtype)
    pwe = core.paligemma_with_expert
    if pi_flavour(core) not in ("openpi", "lerobot") or not hasattr(pwe, "to_bfloat16_for_selected_params"):
        return model.to(dtype=dtype)
    if dtype == torch.float32:
        return model.to(dtype=dtype)
    if dtype != torch.bfloat16:
        raise ModelSpecError(f"{type(core).__module__.split('.')[0]} models run in float32 or bfloat16, not {dtype}; "
                             "pass --dtype float32 or --dtype bfloat16")
    pwe.to_bfloat16_for_selected_params("bfloat16")
    return model
