"""cnnlab.serve.client.classify: files in, the server's answer out, refusals as ServeError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cnnlab.serve.client import ServeError, classify


def test_classify_sends_files_and_returns_the_answer(server: Any, real_photos: dict[str, Path]) -> None:
    answer = classify(server.url, [real_photos["coffee"], real_photos["cat"]], topk=3)
    assert [p["name"] for p in answer["predictions"]] == ["coffee.png", "chelsea.png"]
    assert answer["predictions"][0]["top"][0]["label"] == "espresso"
    assert len(answer["predictions"][1]["top"]) == 3


def test_a_refusal_raises_with_its_status_and_reason(server: Any, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    with pytest.raises(ServeError) as caught:
        classify(server.url, [notes])
    assert (caught.value.status, caught.value.reason) == (415, "not-an-image")
