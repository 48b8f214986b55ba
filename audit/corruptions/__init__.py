"""Class-wise robustness to natural corruptions (Hendrycks & Dietterich's common corruptions).

registry (names, groups, flag parsing) -> generate (seeded images from ``imagecorruptions-imaug``)
and official (released CIFAR-10-C/CIFAR-100-C/ImageNet-C files) -> points (torch datasets the
DataLoader's workers fill) -> evaluate (the scoring pass and the figures) -> run (the audit phase).
docs/corruptions.md describes the figures, the seeding and the parameters' provenance.
"""
from .registry import ALL, COMMON, HELD_OUT, SEVERITIES, parse_corruptions, parse_severities

__all__ = ["ALL", "COMMON", "HELD_OUT", "SEVERITIES", "parse_corruptions", "parse_severities"]
