"""The one normalization of pixels, shared by prepare (the shards) and predict (new images).

    stored = float32(pixel) / float32(255)     pixel: uint8, stored: float32 in [0, 1]

The division is float32's, correctly rounded, so a pixel k always becomes the same bits: the
network sees a PNG's pixels at prediction exactly as it saw the shards' in training.
"""

from __future__ import annotations

import numpy as np

NORMALIZATION = "float32(pixel) / float32(255)"


def normalize(pixels: np.ndarray) -> np.ndarray:
    """(n, features) uint8 -> (n, features) float32 by the rule above."""
    assert pixels.dtype == np.uint8, pixels.dtype
    stored: np.ndarray = np.divide(pixels, np.float32(255), dtype=np.float32)
    return stored
