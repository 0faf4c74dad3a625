"""The example TopK sparse autoencoder, public: what ``examples/train_sae.py`` trains on a store's loader and what
``actstore features`` reads back (:func:`~actstore.load_sae` also reads Gemma Scope's JumpReLU layout).

    from actstore.sae import TopKSAE, explained_variance, load_checkpoint, save_checkpoint
"""

from __future__ import annotations

from .train._sae import TopKSAE, explained_variance, load_checkpoint, save_checkpoint

__all__ = ["TopKSAE", "explained_variance", "load_checkpoint", "save_checkpoint"]
