"""A hostile or malformed ``--real-labels`` file is a clear DatasetError (exit 2), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.errors import DatasetError
from cnnlab.imagedata.imagenet_val import read_real_labels


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # nesting past the JSON decoder's recursion limit
    "[[" + "1" * 5000 + "]]",  # a number past Python's digit limit
    "[[true]]",  # a boolean is not class 1
    "[[1, 2], [3",  # truncated
])
def test_malformed_real_labels_are_a_dataset_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "real.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError):
        read_real_labels(path)
