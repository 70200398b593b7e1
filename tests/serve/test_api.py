"""The model side of `cnnlab serve` answers what `cnnlab.predict` answers: same classes, same probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

import cnnlab


def test_serve_and_predict_give_the_same_top_k_for_real_photos(server: Any, real_photos: dict[str, Path]) -> None:
    paths = [real_photos[name] for name in sorted(real_photos)]
    expected = cnnlab.predict(paths, model="efficientnet_lite0", topk=5)
    assert expected.runtime["backend"] == "onnxruntime"  # the backend auto chooses here, as the server did
    answer = httpx.post(server.url + "/v1/predict", timeout=60,
                        files=[("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]).json()
    assert answer["backend"] == expected.runtime["backend"]
    assert answer["model"] == expected.model
    for mine, theirs in zip(answer["predictions"], expected.predictions, strict=True):
        assert mine["name"] == Path(theirs.path).name
        assert [c["index"] for c in mine["top"]] == [c.index for c in theirs.top]
        assert [c["label"] for c in mine["top"]] == [c.label for c in theirs.top]
        for a, b in zip(mine["top"], theirs.top):
            assert abs(a["probability"] - b.probability) <= 1e-5
        assert mine["unknown"] is theirs.unknown is False


def test_a_request_past_its_deadline_is_not_decoded_by_the_model_process() -> None:
    """The web process has answered it 504 already: the model process skips its images instead of decoding them."""
    import time

    from cnnlab.options import ModelSource
    from cnnlab.serve.api import EXPIRES, ClassifierAPI
    from cnnlab.serve.config import ServeConfig

    api = ClassifierAPI(ServeConfig(model=ModelSource(name="efficientnet_lite0")))  # no model loaded: none needed
    decoded = api.decode_request({"images": [b"\x89PNG...", b"\xff\xd8\xff..."], EXPIRES: time.time() - 1})
    assert decoded.images == [] and decoded.count == 2
    assert [(i, reason) for i, reason, _ in decoded.failed] == [(0, "timeout"), (1, "timeout")]
