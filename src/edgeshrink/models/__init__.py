"""Model sources (local Hugging Face directories, short names of installed model packages) and fine-tuning."""

from edgeshrink.models.sources import MODEL_PACKAGES, model_labels, resolve_model

__all__ = ["MODEL_PACKAGES", "model_labels", "resolve_model"]
