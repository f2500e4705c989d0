"""Running models: configs, samples, checkpoints, DDP helpers, training, prediction, saliency.
"""

from mediad._lazy import lazy_exports

_HOMES = {
    "CHECKPOINT_FORMAT": "checkpoint",
    "DataConfig": "config",
    "DistInfo": "ddp",
    "OCCLUSION_MASK": "explain",
    "OptimConfig": "config",
    "Prediction": "predictor",
    "Predictor": "predictor",
    "PreparedMRI": "predictor",
    "TrainConfig": "config",
    "TrainResult": "trainer",
    "batch_to": "samples",
    "build_samples": "samples",
    "cache_root": "config",
    "confounder_vector": "samples",
    "data_fingerprint": "samples",
    "distributed": "ddp",
    "drop_modalities": "samples",
    "gather": "ddp",
    "hash_subjects": "checkpoint",
    "load_checkpoint": "checkpoint",
    "make_dataset": "samples",
    "make_summarizer": "samples",
    "new_salt": "checkpoint",
    "overlapping_subjects": "checkpoint",
    "predict_loader": "trainer",
    "prepare_images": "samples",
    "saliency": "explain",
    "save_checkpoint": "checkpoint",
    "train": "trainer",
}

__all__, __getattr__ = lazy_exports(__name__, _HOMES)
