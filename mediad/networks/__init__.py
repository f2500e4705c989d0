"""The networks: image / text / tabular encoders, the causal head, MediAD and the baselines.
"""

from mediad._lazy import lazy_exports

_HOMES = {
    "ARCHITECTURE": "models",
    "AdversarialNet": "models",
    "BackDoorAdjustment": "causal",
    "CrossAttentionNet": "models",
    "CrossModalFusion": "causal",
    "FrontDoorAdjustment": "causal",
    "ImageEncoder": "encoders",
    "ImageEncoderConfig": "encoders",
    "KINDS": "models",
    "LateFusionNet": "models",
    "LocalContrast": "encoders",
    "MediADNet": "models",
    "Mediator": "causal",
    "MetadataNormNet": "models",
    "ModelConfig": "models",
    "ModelOutput": "models",
    "MultimodalNet": "models",
    "TABULAR_FIELDS": "encoders",
    "TASKS": "models",
    "TabularBaseline": "models",
    "TabularEncoder": "encoders",
    "TextEmbedder": "encoders",
    "VARIANTS": "models",
    "build_model": "models",
    "remove_group_means": "causal",
    "masked_attention": "causal",
    "masked_mean": "causal",
    "tabular_features": "encoders",
    "text_model_folder": "encoders",
}

__all__, __getattr__ = lazy_exports(__name__, _HOMES)
