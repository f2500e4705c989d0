"""MediAD: CN / MCI / AD diagnosis from a 3D T1 MRI and a clinical record.

Research use only; not a medical device and not for clinical decisions.

Packages, one concern each:
    data         records, MRI ingest, NIfTI safety, splits, the synthetic cohort, validation
    networks     image / text / tabular encoders, the causal head, MediAD and the baselines
    engine       training, checkpoints, samples, distributed helpers, prediction, saliency
    experiments  cohort evaluation, the confounder ablation, the bundled demo
    summarize    the clinical-record summariser (template, LLM backends, verification)
"""

__version__ = "0.1.0"

#: Said on every page, report and prediction.
RESEARCH_NOTICE = "Research use only: not a medical device, not for clinical decisions."

__all__ = ["RESEARCH_NOTICE", "__version__"]
