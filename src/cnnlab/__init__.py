"""cnnlab: compare, fine-tune and use pretrained image classifiers on your own pictures."""

from __future__ import annotations

__version__ = "0.1.0"
