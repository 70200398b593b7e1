"""Limits of image decoding that both the decoder and the preprocessing name (no imports: cheap to load)."""

from __future__ import annotations

#: Largest number of pixels (width * height) decoded by default: Pillow's own default limit.
DEFAULT_MAX_PIXELS = 89_478_485
