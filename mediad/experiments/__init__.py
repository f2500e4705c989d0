"""Experiments on cohorts: evaluation with reports, the confounder ablation, the bundled demo.
"""

from mediad._lazy import lazy_exports

_HOMES = {
    "AblationConfig": "ablation",
    "CALIBRATION_REPORT": "demo",
    "DEMO_CALIBRATION": "demo",
    "DEMO_CALIBRATION_FOLDER": "demo",
    "DEMO_COHORT": "demo",
    "DEMO_CONFIG": "demo",
    "DEMO_SHIFTED": "demo",
    "EvalResult": "evaluation",
    "LABEL_BLIND": "demo",
    "LABEL_BLIND_FOLDER": "demo",
    "QUICK": "ablation",
    "REFERENCE_CALIBRATION": "demo",
    "REFERENCE_CALIBRATION_FOLDER": "demo",
    "REFERENCE_COHORT": "demo",
    "REFERENCE_CONFIG": "demo",
    "REFERENCE_FOLDER": "demo",
    "TEST_SETS": "ablation",
    "VARIANTS": "ablation",
    "demo_cohort_ready": "demo",
    "demo_config": "demo",
    "ensure_demo_cohort": "demo",
    "ensure_demo_model": "demo",
    "evaluate": "evaluation",
    "model_folder": "demo",
    "paired_difference": "ablation",
    "probe_balanced_accuracy": "ablation",
    "recovered_share": "ablation",
    "run_ablation": "ablation",
    "share_interval": "ablation",
    "site_probe": "ablation",
    "verdicts": "ablation",
}

__all__, __getattr__ = lazy_exports(__name__, _HOMES)
