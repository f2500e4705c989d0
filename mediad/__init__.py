"""MediAD: CN / MCI / AD diagnosis from a 3D T1 MRI and a clinical record.

Research use only; not a medical device and not for clinical decisions.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
