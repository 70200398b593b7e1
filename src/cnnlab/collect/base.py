"""Small shared types of the collect subpackage: search hits, candidates, the engine interface."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Final, Protocol, runtime_checkable

from cnnlab import __version__
from cnnlab.errors import CnnlabError

#: The User-Agent sent with every request: it names cnnlab and says what it does.
USER_AGENT: Final[str] = f"Mozilla/5.0 (compatible; cnnlab/{__version__}; image dataset collector)"

#: The product token matched against robots.txt groups and ``X-Robots-Tag: <bot>:`` prefixes.
ROBOTS_TOKEN: Final[str] = "cnnlab"

#: Manifest statuses.
STATUSES: Final[tuple[str, ...]] = ("ok", "duplicate", "rejected", "failed")


class CollectError(CnnlabError):
    """A collect or split run cannot start or go on (bad options, bad input file, locked folder)."""

    exit_code = 2


class PageFetchError(CnnlabError):
    """A search-engine result page could not be fetched; ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class SearchHit:
    """One image an engine found: where the image is, the page it sits on, its license if known."""

    url: str
    source_page: str | None = None
    license: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One image to fetch (or import) for one class, with where it came from."""

    label: str
    url: str
    engine: str
    query: str | None = None
    source_page: str | None = None
    license: str | None = None
    local_path: str | None = None  # set for images imported from a folder
    fetch_url: str | None = None
    """The URL to fetch when it differs from ``url``: the one with the credentials (``user:pass@``) it was
    given with. ``url``, the one recorded and matched on resume, never holds credentials."""

    @classmethod
    def from_url(cls, label: str, url: str, engine: str, query: str | None = None, source_page: str | None = None,
                 license: str | None = None) -> Candidate:
        """A candidate for ``url`` with any credentials in it kept for the fetch only."""
        clean = strip_credentials(url)
        return cls(label, clean, engine, query, strip_credentials(source_page) if source_page else source_page,
                   license, fetch_url=url if clean != url else None)


#: The ``user:password@`` part of any URL in a text (the last ``@`` before the path counts, as in urlsplit).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


def strip_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it removed (``http://user:pw@host/x`` -> ``http://host/x``):
    URL lists may hold them, and the manifest is a file people share."""
    return _USERINFO.sub(r"\1", text)


#: Fetches a search-result page and returns its body; raises :class:`PageFetchError`.
PageFetcher = Callable[[str], bytes]


@runtime_checkable
class Engine(Protocol):
    """A search engine: search terms in, candidate image URLs out.

    ``search`` is a lazy iterator: result pages are fetched (through ``fetch_page``, which applies
    the downloader's timeouts, caps, retries and per-host politeness) only as hits are consumed.
    A new engine is one class with these two attributes and this method.
    """

    @property
    def name(self) -> str:
        """Short name, recorded in the manifest's ``engine`` field."""

    @property
    def no_results_hint(self) -> str:
        """Said after "<engine> returned no results for '<query>'", e.g. a known upstream breakage."""

    def search(
        self,
        query: str,
        *,
        limit: int,
        filters: Mapping[str, str],
        fetch_page: PageFetcher,
    ) -> Iterator[SearchHit]: ...


def require(module: str) -> ModuleType:
    """Import an optional dependency of collect, or say plainly how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise CollectError(
            f"{package} is needed here but cannot be imported ({exc}); install it with: pip install 'cnnlab[collect]'"
        ) from None


_BAD_LABEL = re.compile(r"[\\/\x00-\x1f:*?\"<>|]")

#: Longest folder name most file systems accept (ext4, XFS, Btrfs, APFS, NTFS: 255), in bytes.
MAX_LABEL_BYTES: Final[int] = 255


def check_label(label: str) -> str:
    """Return ``label`` stripped, or raise :class:`CollectError` if it cannot be a folder name.

    A name longer than :data:`MAX_LABEL_BYTES` bytes (UTF-8) is refused before anything is written.
    """
    name = label.strip()
    if not name or name in (".", "..") or name.startswith((".", "_")) or _BAD_LABEL.search(name):
        raise CollectError(
            f"class name {label!r} cannot be used as a folder name "
            "(none of \\ / : * ? \" < > | or control characters, and not starting with '.' or '_')"
        )
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_LABEL_BYTES:
        raise CollectError(
            f"class name {name[:40]!r}... is {size} bytes long; folder names can have at most {MAX_LABEL_BYTES} bytes"
        )
    return name
