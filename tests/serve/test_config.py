"""ServeConfig checks its values once, when it is made, with messages that name the parameter."""

from __future__ import annotations

import pytest

from cnnlab.errors import UsageError
from cnnlab.options import ModelSource
from cnnlab.serve.config import ServeConfig


def test_defaults_listen_on_this_machine_only() -> None:
    config = ServeConfig(model=ModelSource(name="efficientnet_lite0"))
    assert config.host == "127.0.0.1"
    assert config.url == "http://127.0.0.1:8000"
    assert config.auto_backend is True
    assert config.to_dict()["model"] == "efficientnet_lite0"


def test_a_model_given_by_name_becomes_a_model_source() -> None:
    assert ServeConfig(model="resnet18").model == ModelSource(name="resnet18")  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "words"), [
    ({"host": "example.org"}, "host"),
    ({"port": 80}, "port"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"batch_timeout_ms": -1}, "batch_timeout_ms"),
    ({"workers": 0}, "workers"),
    ({"max_image_bytes": 0}, "max_image_bytes"),
    ({"unknown_threshold": "often"}, "unknown_threshold"),
    ({"unknown_threshold": 1.5}, "unknown_threshold"),
])
def test_bad_values_are_refused_naming_the_parameter(changes: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        ServeConfig(model=ModelSource(name="efficientnet_lite0"), **changes)  # type: ignore[arg-type]


def test_the_unknown_threshold_is_a_probability_or_auto() -> None:
    model = ModelSource(name="efficientnet_lite0")
    assert ServeConfig(model=model, unknown_threshold="0.25").unknown_threshold == 0.25
    assert ServeConfig(model=model, unknown_threshold=" AUTO ").unknown_threshold == "auto"
    assert ServeConfig(model=model, host="::").url == "http://[::1]:8000"


def test_an_int8_backend_needs_an_int8_file() -> None:
    from cnnlab.options import RuntimeOptions

    with pytest.raises(UsageError, match="calibrates"):
        ServeConfig(model=ModelSource(name="efficientnet_lite0"), runtime=RuntimeOptions(backend="onnxruntime-int8"),
                    auto_backend=False)
