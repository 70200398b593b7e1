"""Settings of a collect run that the CLI shows as defaults; light to import (no network stack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cnnlab.collect.base import USER_AGENT

#: Images wanted per class from a search engine when the caller does not say.
DEFAULT_PER_CLASS: Final[int] = 100
#: Images whose shorter side is below this many pixels are rejected.
DEFAULT_MIN_SIZE: Final[int] = 64
#: Perceptual-hash distance (of 64 bits) at or below which two images are near duplicates.
DEFAULT_NEAR_DUP_THRESHOLD: Final[int] = 4
#: Downloads in flight.
DEFAULT_THREADS: Final[int] = 8


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

    @property
    def attempt_deadline(self) -> float:
        return self.deadline if self.deadline is not None else 4.0 * self.timeout
