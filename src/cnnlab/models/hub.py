"""Weights on the Hugging Face hub (timm's models): the hub cache, and downloads through huggingface_hub.

huggingface_hub's own settings apply and are read when a file is looked up, not when a module is
imported: ``HF_ENDPOINT`` (a mirror or a local server), ``HF_HUB_OFFLINE=1`` (never connect),
``HF_HUB_CACHE`` or ``HF_HOME`` (where the cache is). A repository's file is looked up as
``model.safetensors`` first, then ``pytorch_model.bin`` (older repositories).
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.errors import UsageError

#: File names tried in a repository, in order.
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_ENDPOINT = "https://huggingface.co"


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: the hub is never contacted."""
    return _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE")


def endpoint() -> str:
    """The hub's base URL: ``$HF_ENDPOINT`` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """The hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise UsageError("weights from the Hugging Face hub need huggingface_hub: pip install 'cnnlab[timm]'") from None


def cached_file(repo_id: str) -> Path | None:
    """The repository's weights file in the hub cache, or ``None``.

    Reads huggingface_hub's cache layout (``models--ORG--NAME/refs/main`` names the snapshot,
    ``snapshots/COMMIT/FILE``) without importing it or connecting anywhere.
    """
    from cnnlab.errors import CnnlabError
    from cnnlab.imagedata.decode import read_regular_file

    folder = cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = read_regular_file(folder / "refs" / "main", max_bytes=4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError, CnnlabError):  # a ref is 40 hex digits: anything else is not one
        return None
    for filename in HUB_FILENAMES:
        path = folder / "snapshots" / commit / filename
        if commit and path.is_file():
            return path
    return None


def download(repo_id: str) -> Path:
    """Download the repository's weights file into the hub cache (or find it there).

    Raises:
        LookupError: offline mode is on, the repository has no weights file, or the hub cannot be
            reached; the message says which.
    """
    _require_hub()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    if offline():
        raise LookupError("HF_HUB_OFFLINE is set, so the hub is not contacted; the file is not in the hub cache "
                          f"{cache_dir()}")
    last: Exception | None = None
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir(), endpoint=endpoint()))
        except RemoteEntryNotFoundError as exc:  # no such file in this repository: try the next name
            last = exc
        except (OSError, ValueError) as exc:  # no connection, unknown repository, HTTP errors, a full disk
            raise LookupError(f"download from {endpoint()} failed: {_first_line(exc)}") from None
    raise LookupError(f"{endpoint()}/{repo_id} has none of {', '.join(HUB_FILENAMES)} ({_first_line(last)})")


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
