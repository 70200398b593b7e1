"""The settings of a collect run (:class:`CollectConfig`, :class:`FetchConfig`) and their defaults.

Light to import (no network stack): the CLI builds these, and a setting that cannot work is refused
here, once, before any folder is touched or any connection made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from cnnlab.collect.base import USER_AGENT, CollectError, Engine, check_label
from cnnlab.imagedata.hashes import DEFAULT_NEAR_DUP_THRESHOLD
from cnnlab.imagedata.preprocess import DEFAULT_MAX_PIXELS
from cnnlab.options import EngineName, parse_choice

#: Images wanted per class from a search engine when the caller does not say.
DEFAULT_PER_CLASS: Final[int] = 100
#: Images whose shorter side is below this many pixels are rejected.
DEFAULT_MIN_SIZE: Final[int] = 64
#: Downloads in flight.
DEFAULT_THREADS: Final[int] = 8
#: Per query, how many hits an engine is asked for at most (engines page lazily).
DEFAULT_MAX_HITS_PER_QUERY: Final[int] = 1000
#: Longest side over shortest side above which a collected image is refused (panoramas stay below).
DEFAULT_MAX_ASPECT_RATIO: Final[float] = 10.0
#: Longest wait any time setting of :class:`FetchConfig` may ask for, in seconds (an hour): past it a
#: download is not slow but stuck, and timers and socket timeouts overflow (``inf``, ``1e10``).
MAX_WAIT: Final[float] = 3600.0
#: Images per shard when the set is written as shards (``webdataset`` or ``parquet``).
DEFAULT_SHARD_SIZE: Final[int] = 1000


class OutputFormat(StrEnum):
    """How a collected set is stored: loose files per class, or shards (see :mod:`cnnlab.collect.shards`)."""

    FILES = "files"
    WEBDATASET = "webdataset"
    PARQUET = "parquet"


__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO", "DEFAULT_MAX_HITS_PER_QUERY", "DEFAULT_MIN_SIZE", "DEFAULT_NEAR_DUP_THRESHOLD",
    "DEFAULT_PER_CLASS", "DEFAULT_SHARD_SIZE", "DEFAULT_THREADS", "MAX_WAIT", "CollectConfig", "FetchConfig",
    "OutputFormat",
]


@dataclass(frozen=True)
class FetchConfig:
    """Network limits and manners. All times in seconds."""

    timeout: float = 10.0
    """Connect timeout, and the longest wait for any single read."""
    deadline: float | None = None
    """Longest time one attempt at one file may take in all (default ``4 * timeout``)."""
    retries: int = 2
    """Extra attempts after a transient failure."""
    backoff: float = 0.5
    """First retry waits about this long, then twice as long each time (with jitter)."""
    max_backoff: float = 30.0
    """Longest wait before a retry. A server whose ``Retry-After`` asks for more is not retried in
    this run: the URL is ``failed`` (its detail says so) and ``retry_failed`` tries it later."""
    max_bytes: int = 20 * 1024 * 1024
    """Largest image accepted, in bytes."""
    max_page_bytes: int = 8 * 1024 * 1024
    """Largest search-result page accepted, in bytes."""
    max_redirects: int = 5
    per_host: int = 2
    """Requests in flight at once to one host."""
    host_delay: float = 0.25
    """Least time between the starts of two requests to one host."""
    robots: bool = True
    """Honour robots.txt for image URLs. Turn off only for hosts you own."""
    max_crawl_delay: float = 10.0
    """A robots.txt ``Crawl-delay`` is honoured up to this many seconds."""
    user_agent: str = USER_AGENT
    allow_private_hosts: bool = False
    """Connect to private, loopback, link-local and other non-public addresses (checked on the
    resolved address of every connection, redirects included). Off by default (SSRF protection:
    a URL list or a redirect must not reach ``169.254.169.254`` or your LAN); turn on only for
    hosts you own, e.g. a server on 127.0.0.1 in tests."""

    def __post_init__(self) -> None:
        """Refuse a setting that cannot work before any connection is made (``inf`` or ``nan`` seconds)."""
        for name, low, allow_zero in (("timeout", 0.0, False), ("host_delay", 0.0, True), ("backoff", 0.0, True),
                                      ("max_backoff", 0.0, True), ("max_crawl_delay", 0.0, True)):
            _check_seconds(name, getattr(self, name), low, allow_zero)
        if self.deadline is not None:
            _check_seconds("deadline", self.deadline, 0.0, False)
        for name, least in (("retries", 0), ("max_bytes", 1), ("max_page_bytes", 1), ("max_redirects", 0),
                            ("per_host", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CollectError(f"{name.replace('_', ' ')} must be a whole number >= {least}, not {value!r}")

    @property
    def attempt_deadline(self) -> float:
        return self.deadline if self.deadline is not None else 4.0 * self.timeout


def _check_seconds(name: str, value: float, low: float, allow_zero: bool) -> None:
    what = name.replace("_", " ")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CollectError(f"{what} must be a finite number of seconds, not {value!r}")
    if value < low or (value == low and not allow_zero) or value > MAX_WAIT:
        least = f">= {low:g}" if allow_zero else f"above {low:g}"
        raise CollectError(f"{what} must be {least} and at most {MAX_WAIT:g} seconds, not {value:g}")


@dataclass(frozen=True)
class CollectConfig:
    """What one collect run builds and how; :func:`cnnlab.collect.run` takes it.

    Candidates come from a search engine (one query per class, its name, unless ``queries`` says
    otherwise), a URL list (``urls``) or a folder (``from_folder``). Parsed once, here: ``engine`` as
    an :class:`~cnnlab.options.EngineName` (or an :class:`~cnnlab.collect.base.Engine` object),
    paths as :class:`~pathlib.Path`, class names checked as folder names.
    """

    out: Path
    """Dataset folder: ``out/<class>/<sha256[:16]>.<ext>`` plus ``out/manifest.jsonl`` (made if missing);
    with a shard ``format``, ``out/shards/`` instead of the class folders."""
    classes: Sequence[str] = ()
    """Class names. With a search engine, what to search for; with ``urls``/``from_folder``, the
    classes read (default: all of them)."""
    per_class: int | None = DEFAULT_PER_CLASS
    """Images wanted per class (``None`` with ``urls``/``from_folder``: every candidate)."""
    engine: EngineName | Engine = EngineName.BING
    """A search engine's name or object; ``urls``/``folder`` are implied by ``urls``/``from_folder``."""
    queries: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Search terms per class, e.g. ``{"cat": ["tabby cat", "house cat"]}``."""
    filters: Mapping[str, str] = field(default_factory=dict)
    """Engine filters, e.g. ``{"size": "large", "type": "photo", "license": "creativecommons"}``."""
    urls: Path | None = None
    """A URL list (txt with ``label``, or CSV/JSONL with ``url`` and ``label``) instead of an engine."""
    label: str | None = None
    """The class of a plain URL list, or of a folder imported as one class."""
    from_folder: Path | None = None
    """A folder of images (``DIR/<class>/...``, or ``DIR`` with ``label``) to import instead of an engine."""
    engine_url: str | None = None
    """Base URL of the engine (a mirror, or a local server in tests)."""
    api_key: str | None = None
    """Flickr API key (default: ``FLICKR_API_KEY`` or ``FLICKR_APIKEY``)."""
    min_size: int = DEFAULT_MIN_SIZE
    """Images whose shorter side is below this many pixels are rejected."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are rejected as decompression bombs."""
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO
    """Images whose longer side is more than this many times the shorter are rejected; ``None``: any shape."""
    near_dup_threshold: int = DEFAULT_NEAR_DUP_THRESHOLD
    """Perceptual-hash distance (bits of 64) at or below which images are near duplicates; ``-1``:
    exact duplicates only."""
    threads: int = DEFAULT_THREADS
    """Downloads in flight at once (per-host limits are in ``fetch``)."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    """Timeouts, retries, byte cap, redirects, politeness, robots.txt, private hosts."""
    retry_failed: bool = False
    """Fetch again URLs whose earlier attempt ``failed`` (network or server errors)."""
    max_hits_per_query: int = DEFAULT_MAX_HITS_PER_QUERY
    """Stop asking an engine for more after this many hits per query."""
    format: OutputFormat = OutputFormat.FILES
    """``files`` (class folders), or shards: ``webdataset`` (tar) or ``parquet``, in ``out/shards/``."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Images per shard (every shard but the last of a run holds exactly this many)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "out", Path(self.out))
        if isinstance(self.classes, str):
            raise CollectError(f"classes must be a list of names, not the string {self.classes!r}")
        set_(self, "classes", tuple(check_label(c) for c in self.classes))
        if isinstance(self.engine, str):  # an EngineName is a str too
            set_(self, "engine", parse_choice(EngineName, self.engine, "engine"))
        queries: dict[str, tuple[str, ...]] = {}
        for cls, terms in self.queries.items():
            key = check_label(cls)
            for term in [terms] if isinstance(terms, str) else terms:
                if term not in queries.get(key, ()):
                    queries[key] = (*queries.get(key, ()), term)
        set_(self, "queries", queries)
        set_(self, "filters", dict(self.filters))
        for name in ("urls", "from_folder"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, Path(value))
        if self.urls is not None and self.from_folder is not None:
            raise CollectError("give either a URL list (urls) or a folder (from_folder), not both")
        if self.from_folder is not None and self.out is not None:
            source, target = Path(self.from_folder).resolve(), Path(self.out).resolve()
            if source == target or target.is_relative_to(source) or source.is_relative_to(target):
                raise CollectError(f"the folder to import (from_folder) and the output folder (out) are {source} and "
                                   f"{target}: one holds the other, so the collect would import its own copies; "
                                   "give a separate output folder")
        if self.label is not None:
            set_(self, "label", check_label(self.label))
        _check_whole("threads", self.threads, 1)
        _check_whole("min size", self.min_size, 1)
        _check_whole("max pixels", self.max_pixels, 1)
        _check_whole("near-duplicate threshold", self.near_dup_threshold, -1)
        _check_whole("max hits per query", self.max_hits_per_query, 1)
        _check_whole("shard size", self.shard_size, 1)
        set_(self, "format", parse_choice(OutputFormat, self.format, "format"))
        if self.per_class is not None:
            _check_whole("per class", self.per_class, 0)
        ratio = self.max_aspect_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                                  or not math.isfinite(ratio) or ratio < 1):
            raise CollectError(f"max aspect ratio must be a finite number >= 1 or None, not {ratio!r}")
        if not isinstance(self.fetch, FetchConfig):
            raise CollectError(f"fetch must be a FetchConfig, not {type(self.fetch).__name__}")

    @property
    def engine_name(self) -> str:
        """The engine's name as the manifest records it (``urls``/``folder`` when those inputs are given)."""
        if self.urls is not None:
            return EngineName.URLS.value
        if self.from_folder is not None:
            return EngineName.FOLDER.value
        return self.engine.value if isinstance(self.engine, EngineName) else self.engine.name


def _check_whole(what: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise CollectError(f"{what} must be a whole number >= {least}, not {value!r}")
