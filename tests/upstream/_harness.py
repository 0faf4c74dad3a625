"""Shared by the upstream check scripts (run in the upstream venv, see tests/_upstream_env.py).

- ``setup()``: makes openpi's PyTorch model and lerobot 0.4.4 importable on Python 3.11 without jax: a placeholder
  ``torchvision`` (its PyPI wheel needs another torch; pi0 / pi0.5 never call it), and the two jax-only openpi
  modules ``PI0Pytorch`` touches given stand-in attributes: ``openpi.models.gemma.get_config`` (variant -> widths)
  and ``openpi.shared.image_tools.resize_with_pad_torch`` (lerobot's function, which lerobot marks as an exact copy
  of openpi's);
- ``shrink_vision(module)``: openpi / lerobot hard-code SigLIP-So400m and a 2048-wide projector; for tiny test
  models the vision config is made small (hidden 32, 2 layers) right before PaliGemma is built, keeping its
  image_size / patch_size (224 / 14: 256 tokens per camera, as in the real model);
- ``check_capture(...)``: captures one batch through ``capture`` into a real store and compares what
  ``actstore.ActStore`` reads back, bit for bit, with plain torch hooks of its own.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

TINY = {  # name -> (width, depth, mlp_dim, num_heads, num_kv_heads, head_dim); experts share depth/heads/head_dim
    "tiny_vlm": (64, 4, 128, 8, 1, 16),
    "tiny_expert": (32, 4, 64, 8, 1, 16),
}
LAYERS = [0, 2, 3]  # first, a middle and the last layer of the depth-4 stacks


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []

        def getattr_(name, _mod=spec.name):
            if name.startswith("__"):
                raise AttributeError(name)
            if name[:1].isupper():
                return type(name, (torch.nn.Module,), {"__module__": _mod})

            def unavailable(*_a, **_k):
                raise RuntimeError(f"placeholder torchvision: {_mod}.{name} is not available in this test env")

            return unavailable

        mod.__getattr__ = getattr_
        return mod

    def exec_module(self, module):
        pass


@dataclasses.dataclass
class GemmaVariant:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


def get_config(variant: str) -> GemmaVariant:
    if variant not in TINY:
        raise ValueError(f"test stand-in knows only the variants {sorted(TINY)}, got {variant!r}")
    return GemmaVariant(*TINY[variant])


def setup() -> None:
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cached False before the placeholder exists
    sys.meta_path.insert(0, _TorchvisionStub())
    import openpi.models
    import openpi.shared
    from lerobot.policies.pi05 import modeling_pi05

    gemma = types.ModuleType("openpi.models.gemma")
    gemma.get_config = get_config
    gemma.Config = GemmaVariant
    image_tools = types.ModuleType("openpi.shared.image_tools")
    image_tools.resize_with_pad_torch = modeling_pi05.resize_with_pad_torch
    sys.modules["openpi.models.gemma"], openpi.models.gemma = gemma, gemma
    sys.modules["openpi.shared.image_tools"], openpi.shared.image_tools = image_tools, image_tools


def shrink_vision(module) -> None:
    """Replace ``module.PaliGemmaForConditionalGeneration`` by a builder that shrinks the vision config first."""
    orig = module.PaliGemmaForConditionalGeneration
    if getattr(orig, "_shrunk", False):
        return

    def build(config):
        v = config.vision_config
        v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size = 32, 2, 2, 64
        v.projection_dim = config.projection_dim = config.text_config.hidden_size
        return orig(config=config)

    build._shrunk = True
    module.PaliGemmaForConditionalGeneration = build


def randomise_adarms(model) -> None:
    """AdaRMS ``dense`` layers start at zero upstream; random ones make the conditioning matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".dense." in name and "gemma_expert" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def make_obs(n_cams: int, size: int, lengths: list[int], *, L: int = 12, action_dim: int = 32, horizon: int = 10,
             seed: int = 0):
    """A batch with ``n_cams`` images of ``size`` px and prompts of the given real lengths (right-padded to L)."""
    from capture import Observation

    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.randint(4, 5000, (B, L), generator=g) * mask
    sample = torch.arange(B, dtype=torch.long) + 100 * seed
    return Observation(
        images=[torch.rand(B, 3, size, size, generator=g) * 2 - 1 for _ in range(n_cams)],
        img_masks=[torch.ones(B, dtype=torch.bool) for _ in range(n_cams)], lang_tokens=ids, lang_masks=mask,
        state=torch.randn(B, action_dim, generator=g), noise=torch.randn(B, horizon, action_dim, generator=g),
        sample=sample, prompt=[f"prompt {i}" for i in range(B)], episode=sample, frame=sample * 0,
        task=sample * 0)


class Hooks:
    """Plain torch hooks, independent of capture's recorder: layer outputs, the adarms_cond each expert layer
    receives, and the prefix pad mask the model builds itself (``embed_prefix``)."""

    def __init__(self, model, core, vlm_paths: dict[int, str], exp_paths: dict[int, str]):
        mods = dict(model.named_modules())
        self.vlm = {i: [] for i in vlm_paths}
        self.exp = {i: [] for i in exp_paths}
        self.cond = {i: [] for i in exp_paths}
        self.prefix_pad: list[torch.Tensor] = []
        self.handles = []
        for i, p in vlm_paths.items():
            self.handles.append(mods[p].register_forward_hook(
                lambda m, a, o, i=i: self.vlm[i].append(_out(o))))
        for i, p in exp_paths.items():
            self.handles.append(mods[p].register_forward_hook(
                lambda m, a, o, i=i: self.exp[i].append(_out(o))))
            self.handles.append(mods[p].register_forward_pre_hook(
                lambda m, a, kw, i=i: self.cond[i].append(
                    None if kw.get("adarms_cond") is None else kw["adarms_cond"].detach().clone()), with_kwargs=True))
        self.core, self.orig_embed = core, core.embed_prefix

        def embed_prefix(*a, **k):
            out = self.orig_embed(*a, **k)
            self.prefix_pad.append(out[1].detach().clone())
            return out

        core.embed_prefix = embed_prefix

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        del self.core.embed_prefix  # back to the class method


def _out(o):
    return (o if torch.is_tensor(o) else o[0]).detach().clone()


def _sorted(rows: dict[str, np.ndarray], keys=("sample", "step", "position")) -> np.ndarray:
    return np.lexsort(tuple(rows[k] for k in reversed(keys) if k in rows))


def check_capture(model, obs, num_steps: int, layers=LAYERS, *, dtype_name: str = "float32") -> dict:
    """Capture ``obs`` (decision, instruction, full, adarms cond) into a store and compare it with ``Hooks``."""
    import actstore
    from capture import Recorder, RecorderConfig, adapter_for

    adapter = adapter_for(model)
    core = model.model if hasattr(model, "model") and hasattr(model.model, "paligemma_with_expert") else model
    ref_actions = adapter.run(model, obs, num_steps)  # no hooks at all
    sites = adapter.sites(layers, ["decision", "instruction", "full"])
    vlm_paths = {i: adapter.layer_paths["vlm"].format(i=i) for i in layers}
    exp_paths = {i: adapter.layer_paths["expert"].format(i=i) for i in layers}
    res: dict = {"cameras": len(obs.images), "image_size": int(obs.images[0].shape[-1]),
                 "prompt_lengths": obs.lang_masks.sum(1).tolist()}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "run.zarr")
        hooks = Hooks(model, core, vlm_paths, exp_paths)
        try:
            with actstore.create(path, attrs={"model": {"name": "upstream-check"}}, autocommit=False) as writer, \
                    Recorder(model, writer, sites, RecorderConfig(cond_kwarg=adapter.cond_kwarg)) as rec, \
                    rec.batch(adapter.context(model, obs), progress={"batches": 1}):
                actions = adapter.run(model, obs, num_steps)
        finally:
            hooks.remove()
        res["actions_equal_uncaptured"] = bool(torch.equal(actions, ref_actions))
        store = actstore.ActStore.open(path)
        res.update(_compare(store, obs, hooks, layers, num_steps, adapter.cond_kwarg is not None and
                            any(c is not None for c in hooks.cond[layers[0]])))
    return res


def _compare(store, obs, hooks: Hooks, layers, num_steps: int, has_cond: bool) -> dict:
    out: dict = {}
    B = obs.lang_tokens.shape[0]
    L = obs.lang_tokens.shape[1]
    pad = hooks.prefix_pad[0].cpu()  # the model's own prefix pad mask (B, P)
    P = pad.shape[1]
    out["prefix_tokens"] = int(P)
    ok_calls = len(hooks.prefix_pad) == 1 and all(len(hooks.vlm[i]) == 1 for i in layers) and all(
        len(hooks.exp[i]) == num_steps for i in layers)
    out["hook_calls_ok"] = bool(ok_calls)
    # instruction: prompt positions P-L+j where the model's pad mask is True
    b_i, j_i = torch.nonzero(pad[:, P - L:], as_tuple=True)
    ins_rows = store.rows("instruction")
    o = _sorted(ins_rows)
    out["instruction_positions_ok"] = bool(np.array_equal(ins_rows["position"][o], (j_i + P - L).numpy())
                                           and np.array_equal(ins_rows["sample"][o], obs.sample[b_i].numpy()))
    out["instruction_rows_bit_exact"] = all(
        torch.equal(store[i, "instruction"][o], hooks.vlm[i][0].cpu()[b_i, j_i + P - L]) for i in layers)
    # full: every non-pad prefix token
    b_f, p_f = torch.nonzero(pad, as_tuple=True)
    full_rows = store.rows("full")
    o = _sorted(full_rows)
    out["full_positions_ok"] = bool(np.array_equal(full_rows["position"][o], p_f.numpy()))
    out["full_rows_bit_exact"] = all(torch.equal(store[i, "full"][o], hooks.vlm[i][0].cpu()[b_f, p_f]) for i in layers)
    # decision: last H expert tokens of every step
    H = obs.noise.shape[1]
    dec_ok, pos_ok = True, True
    for t in range(num_steps):
        view = store.select(layers[0], "decision", step=t)
        rows = {k: v[view.row_index] for k, v in store.rows("decision").items()}
        o = _sorted(rows)
        T = hooks.exp[layers[0]][t].shape[1]
        pos_ok &= bool(np.array_equal(rows["position"][o], np.tile(np.arange(T - H, T), B)))
        for i in layers:
            got = store.select(i, "decision", step=t)[o]
            dec_ok &= bool(torch.equal(got, hooks.exp[i][t].cpu()[:, T - H:].reshape(B * H, -1)))
    out["decision_positions_ok"], out["decision_rows_bit_exact"] = pos_ok, dec_ok
    out["has_cond"] = has_cond
    if has_cond:
        crow = store.cond_rows("adarms")
        o = _sorted(crow, ("sample", "step"))
        got = store.cond("adarms")[o]
        want = torch.stack([hooks.cond[layers[0]][t].cpu() for t in range(num_steps)], 1).reshape(B * num_steps, -1)
        out["cond_per_sample_step_bit_exact"] = bool(torch.equal(got, want))
        out["cond_same_for_every_layer"] = all(
            torch.equal(hooks.cond[i][t], hooks.cond[layers[0]][t]) for i in layers for t in range(num_steps))
        aligned = store.cond("adarms", role="decision")
        rows = store.rows("decision")
        want_rows = torch.stack([hooks.cond[layers[-1]][int(s)][int(b)] for b, s in zip(
            np.searchsorted(obs.sample.numpy(), rows["sample"]), rows["step"], strict=True)])
        out["cond_aligned_with_decision_rows"] = bool(torch.equal(aligned, want_rows.cpu()))
    return out


def all_ok(result: dict) -> bool:
    return all(v for k, v in result.items() if isinstance(v, bool) and k not in ("has_cond", "pi05"))
