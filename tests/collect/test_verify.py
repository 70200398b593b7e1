"""collect's verification of downloaded bytes, which runs in the crawl's threads."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from cnnlab.collect.verify import verify_image


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + i % 7, 36), (i * 3 % 256, 90, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_verifying_in_threads_leaves_the_warning_filters_as_they_were() -> None:
    """Each verification ignores warnings while it reads the header; threads doing that at once through
    ``warnings.catch_warnings`` left an "ignore" in the process's filters for good (3 rounds of 5 before)."""
    images = [_png(i) for i in range(200)]
    verify_image(images[0])  # its first call imports scipy, whose import adds a filter of its own
    for _ in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            before = list(warnings.filters)
            with ThreadPoolExecutor(4) as pool:
                verified = list(pool.map(verify_image, images))
            assert len(verified) == len(images) and all(v.width >= 40 for v in verified)
            assert warnings.filters == before
