"""Running models: configs, samples, checkpoints, DDP helpers, training, prediction, saliency.
"""

from mediad._lazy import lazy_exports

_HOMES = {
    "CHECKPOINT_FORMAT": "checkpoint",
    "CONFIDENT": "predictor",
    "Calibration": "calibration",
    "DataConfig": "config",
    "DistInfo": "ddp",
    "FeatureDistribution": "calibration",
    "InputPattern": "calibration",
    "OCCLUSION_MASK": "explain",
    "OptimConfig": "config",
    "PATTERNS": "calibration",
    "Prediction": "predictor",
    "Predictor": "predictor",
    "PreparedMRI": "predictor",
    "TrainConfig": "config",
    "TrainResult": "trainer",
    "balance_weights": "samples",
    "batch_to": "samples",
    "build_samples": "samples",
    "cache_root": "config",
    "confounder_vector": "samples",
    "data_fingerprint": "samples",
    "distributed": "ddp",
    "drop_modalities": "samples",
    "fit_calibration": "calibration",
    "fit_feature_distribution": "calibration",
    "fit_temperature": "calibration",
    "gather": "ddp",
    "hash_subjects": "checkpoint",
    "input_pattern": "calibration",
    "load_checkpoint": "checkpoint",
    "make_dataset": "samples",
    "make_summarizer": "samples",
    "new_salt": "checkpoint",
    "overlapping_subjects": "checkpoint",
    "predict_loader": "trainer",
    "prepare_images": "samples",
    "restrict_inputs": "calibration",
    "saliency": "explain",
    "save_checkpoint": "checkpoint",
    "train": "trainer",
}

__all__, __getattr__ = lazy_exports(__name__, _HOMES)
