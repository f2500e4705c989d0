"""Data in: clinical records, MRI ingest and NIfTI safety, splits, the synthetic cohort, validation.

Public names load on first use (PEP 562), so ``import mediad.data`` stays cheap
for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CheckVolume": "imaging",
    "CheckVolumed": "imaging",
    "ClinicalRecord": "records",
    "ColumnMap": "records",
    "DIAGNOSES": "records",
    "Diagnosis": "records",
    "HIPPOCAMPUS_CENTERS_MM": "simulate",
    "ImagingConfig": "imaging",
    "LABEL_DEFINING_FIELDS": "records",
    "ManifestRow": "records",
    "MaybeImaged": "transforms",
    "NIFTI_SUFFIXES": "imaging",
    "NUMERIC_FIELDS": "records",
    "RECORD_FIELDS": "records",
    "RecordTable": "records",
    "SCHEMA_FILES": "records",
    "SIMULATOR_VERSION": "simulate",
    "SITES": "simulate",
    "SimulationConfig": "simulate",
    "SiteProfile": "simulate",
    "SplitConfig": "splits",
    "Splits": "splits",
    "VOCABULARIES": "records",
    "ValidationReport": "validate",
    "VolumeInfo": "imaging",
    "build_transforms": "imaging",
    "check_leakage": "splits",
    "check_shape": "imaging",
    "detect_vocabulary": "records",
    "draw_population": "simulate",
    "inspect_volume": "imaging",
    "json_schemas": "records",
    "load_manifest": "records",
    "load_records": "records",
    "load_volume": "imaging",
    "make_splits": "splits",
    "read_table": "records",
    "render_subject": "simulate",
    "scanner_augmentation": "transforms",
    "simulate_cohort": "simulate",
    "to_adnimerge_row": "records",
    "validate_path": "validate",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
