"""Old import path of :mod:`bitnet_edu.config` (the one model-shape type and its presets)."""

from ..config import LINEAR_KINDS, PRESETS, SHAPE_KEYS, BitNetConfig  # noqa: F401

__all__ = ["BitNetConfig", "PRESETS"]
