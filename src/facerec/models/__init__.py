"""Backbones by name, and checkpoints that carry the preprocessing contract.

    model = create_model("mobilefacenet", embedding_size=512, input_size=(112, 112))
    save_model(model, "mbf.pt"); model = load_checkpoint("mbf.pt")

Every model has `model.arch`, `model.arch_kwargs` and `model.preprocess`.
"""

from __future__ import annotations

from facerec.models.registry import create_model, list_models, register_model
from facerec.models.checkpoint import (
    build_from_checkpoint_dict,
    load_checkpoint,
    model_checkpoint_dict,
    save_model,
)

__all__ = [
    "create_model", "list_models", "register_model",
    "build_from_checkpoint_dict", "load_checkpoint", "model_checkpoint_dict", "save_model",
]
