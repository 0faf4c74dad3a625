"""Any Hugging Face causal LM as a capture model: load it, find its decoder layers, tokenize prompts with its tokenizer.

``python -m capture --model hf --checkpoint-path DIR`` loads ``AutoModelForCausalLM.from_pretrained(DIR)``; the
decoder layers are the model's ``ModuleList`` as long as ``config.num_hidden_layers`` (``transformer.h`` in GPT-2,
``model.layers`` in Llama), unless ``--layer-path`` names them. When DIR holds a tokenizer, the observations'
prompts are tokenized with it instead of capture's offline word hash.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._errors import ModelSpecError, SiteError
from ._synthetic import Observation

__all__ = ["causal_lm", "find_layer_path", "load_tokenizer", "retokenize"]


def causal_lm(checkpoint_path: str | None, seed: int) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(checkpoint_path)`` (a ``--model-factory``-style builder)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise ModelSpecError(f"--model hf needs the transformers package: {e}") from e
    if not checkpoint_path:
        raise ModelSpecError("--model hf needs --checkpoint-path (a save_pretrained directory or a cached hub id)")
    try:
        return AutoModelForCausalLM.from_pretrained(checkpoint_path).eval()
    except (OSError, ValueError) as e:
        raise ModelSpecError(f"--checkpoint-path {checkpoint_path!r}: cannot load a causal LM: {e}") from e


def find_layer_path(model: nn.Module) -> str:
    """The decoder layers' path template (``transformer.h.{i}``): the ``ModuleList`` as long as the config's layer
    count, else the longest ``ModuleList``; ``--layer-path`` is the fix when neither exists."""
    cfg = getattr(model, "config", None)
    n = next((getattr(cfg, k) for k in ("num_hidden_layers", "n_layer", "num_layers")
              if isinstance(getattr(cfg, k, None), int)), None)
    lists = [(name, len(m)) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) and name]
    exact = [name for name, size in lists if size == n]
    if exact:
        return f"{exact[0]}.{{i}}"
    if lists:
        name, _ = max(lists, key=lambda x: x[1])
        return f"{name}.{{i}}"
    raise SiteError(f"{type(model).__name__} has no ModuleList of layers; pass --layer-path, e.g. transformer.h.{{i}}")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                    "vocab.txt")
"""Files one of which a saved tokenizer has (``save_pretrained`` writes several)."""


def load_tokenizer(checkpoint_path: str | None) -> Any | None:
    """The tokenizer saved next to the model, or None (the offline word-hash ids are used, with a warning)."""
    if not checkpoint_path:
        return None
    no_tokenizer = (f"no tokenizer in {checkpoint_path!r}: prompts are tokenized by capture's offline word hash "
                    "(ids modulo the vocabulary)")
    local = Path(checkpoint_path)
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        # transformers >= 5 builds an *empty* tokenizer from a bare config (every prompt -> 0 tokens): never use it
        warnings.warn(no_tokenizer, stacklevel=2)
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(checkpoint_path)
    except (OSError, ValueError, ImportError):
        warnings.warn(no_tokenizer, stacklevel=2)
        return None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def retokenize(obs: Observation, tokenizer: Any, max_len: int) -> Observation:
    """``obs`` with ``lang_tokens`` / ``lang_masks`` from ``tokenizer`` (right-padded to the longest prompt)."""
    enc = tokenizer(list(obs.prompt), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    empty = [p for p, m in zip(obs.prompt, enc["attention_mask"].sum(1).tolist(), strict=True) if m == 0]
    if empty:
        raise ModelSpecError(f"the tokenizer {type(tokenizer).__name__} turned the prompt {empty[0]!r} into no tokens; "
                             "save the model's real tokenizer beside it (tokenizer.save_pretrained(DIR))")
    ids = enc["input_ids"].to(torch.long)
    mask = enc["attention_mask"].to(torch.bool)
    return dataclasses.replace(obs, lang_tokens=ids.to(obs.lang_tokens.device), lang_masks=mask.to(obs.lang_masks.device))
