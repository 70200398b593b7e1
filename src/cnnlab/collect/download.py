"""A careful HTTP fetcher for images and search-result pages.

Every image URL goes through :meth:`Downloader.fetch`, which

* accepts only ``http``/``https`` URLs, and follows at most ``max_redirects`` redirects itself so
  that each hop is checked again (scheme, robots.txt, address) and loops are caught;
* refuses to connect to private, loopback, link-local, multicast, reserved and unspecified addresses
  (SSRF: ``169.254.169.254``, ``10.x``, ``127.0.0.1``, ``[::ffff:10.0.0.1]``, ``http://2130706433/``
  ...). The check is made on the address each connection is actually opened to, after DNS
  resolution, for every hop of a redirect chain, so no spelling of a host name or address and no
  DNS answer that changes between check and use gets around it. ``FetchConfig.allow_private_hosts``
  (``cnnlab collect --allow-private-hosts``) turns it off, for hosts you own;
* honours robots.txt (RFC 9309, parsed with ``protego``; an unreachable robots.txt means "disallow"
  as the RFC says, a missing one means "allow") including ``Crawl-delay`` up to a cap. An
  unreachable robots.txt is an outage, not a policy: its URLs are ``failed`` (retried with
  ``retry_failed``), never ``rejected`` for ever;
* honours ``X-Robots-Tag: noai`` / ``noimageai`` (for all bots or for ``cnnlab``);
* limits concurrency and spaces requests per host (politeness), sends an honest User-Agent;
* bounds time: a connect/read ``timeout``, and one ``deadline`` for each attempt at a URL that covers
  everything after its turn at the host comes (connecting, the status line and headers, the body,
  every redirect hop); a server that drips its headers or its body a byte at a time is cut off at it;
* bounds size: ``Content-Length`` over ``max_bytes`` is refused before reading, and a body that
  grows past it is cut off;
* retries transient failures (timeouts, resets, truncated bodies, 408/425/429/5xx) with exponential
  backoff and ``Retry-After``. A ``Retry-After`` longer than ``max_backoff`` is not waited for: the
  URL is ``failed`` with the server's wish in its detail, for a later ``retry_failed`` run.

The outcome is a :class:`FetchResult`: ``ok`` with the bytes, ``rejected`` (policy or content:
never retried on resume) or ``failed`` (network or server), each with a short ``reason`` tag.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.connectionpool

from cnnlab.collect.base import ROBOTS_TOKEN, PageFetchError, require
from cnnlab.collect.config import FetchConfig
from cnnlab.collect.connections import Attempt, CheckedAdapter, blocked_detail
from cnnlab.errors import ImageDecodeError

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_ROBOTS_MAX_BYTES = 512 * 1024
_NOT_IMAGE_TYPES = ("text/", "application/json", "application/xhtml", "application/javascript")
#: Faults of a host, not of its robots.txt: its URLs are reported with them, not as "robots-unreachable".
_HOST_FAULTS = frozenset({"private-address", "tls-error", "bad-url"})


@dataclass
class FetchResult:
    """What happened to one URL."""

    url: str
    status: str  # "ok", "rejected" or "failed"
    reason: str = ""
    detail: str = ""
    data: bytes | None = field(default=None, repr=False)
    final_url: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    attempts: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Fault(Exception):
    """Ends one attempt. ``transient`` faults are retried."""

    def __init__(
        self,
        status: str,
        reason: str,
        detail: str = "",
        *,
        transient: bool = False,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after
        self.http_status = http_status


class _Budget:
    """The time one attempt at one URL may take in all (every redirect hop), counted while its
    requests are in flight, not while it waits for its turn at a host."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.left = seconds


class _HostGate:
    """At most ``concurrency`` requests at once, their starts at least ``delay`` apart."""

    def __init__(self, concurrency: int, delay: float) -> None:
        self._sem = threading.BoundedSemaphore(max(1, concurrency))
        self._lock = threading.Lock()
        self._next = 0.0
        self.delay = delay

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._sem:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next)
                self._next = start + self.delay
            if start > now:
                time.sleep(start - now)
            yield


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _Fault("rejected", "bad-url", str(exc)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _Fault("rejected", "bad-scheme", f"only http and https are fetched, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise _Fault("rejected", "bad-url", "no host name")
    problem = host_name_problem(parts.hostname)
    if problem is not None:
        raise _Fault("rejected", "bad-url", problem)


def host_name_problem(host: str) -> str | None:
    """Why ``host`` cannot be a host name (an empty label, a label over 63 bytes, a name over 253, one
    the IDNA codec refuses), or ``None``. Said before connecting, so one bad line of a URL list is one
    rejected row and not a codec error in the resolver."""
    if host.startswith("[") or ":" in host:  # an IPv6 literal: the address parser judges it
        return None
    try:
        ascii_host = host.rstrip(".").encode("idna")
    except UnicodeError as exc:
        return f"host name {host[:80]!r} cannot be encoded ({exc})"
    labels = ascii_host.split(b".")
    if any(not label for label in labels):
        return f"host name {host[:80]!r} has an empty label"
    if any(len(label) > 63 for label in labels):
        return f"host name {host[:80]!r} has a label over 63 characters"
    if len(ascii_host) > 253:
        return f"host name {host[:80]!r} is over 253 characters"
    return None


def x_robots_forbids(values: str | None, token: str = ROBOTS_TOKEN) -> str | None:
    """The directive (``noai`` or ``noimageai``) in an ``X-Robots-Tag`` value that applies to us.

    Directives may be global (``noai``) or for one bot (``cnnlab: noai``); those for other bots
    are ignored.
    """
    if not values:
        return None
    current_bot: str | None = None
    for part in values.split(","):
        part = part.strip()
        if ":" in part:
            head, rest = part.split(":", 1)
            if head.strip().lower() not in ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"):
                current_bot = head.strip().lower()
                part = rest.strip()
        for directive in part.lower().split():
            if directive in ("noai", "noimageai") and current_bot in (None, "*", token.lower()):
                return directive
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _RobotsCache:
    """robots.txt per origin, fetched once (RFC 9309 semantics)."""

    def __init__(self, downloader: Downloader) -> None:
        self._dl = downloader
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._rules: dict[str, Any] = {}  # origin -> Protego | True (allow all) | str (unreachable) | _Fault

    def check(self, url: str) -> None:
        """Raise a rejecting :class:`_Fault` when robots.txt forbids ``url``."""
        origin = _origin(url)
        with self._lock:
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            if origin not in self._rules:
                self._rules[origin] = self._load(origin)
        rules = self._rules[origin]
        if rules is True:
            return
        if isinstance(rules, _Fault):  # e.g. a private address or a failed TLS handshake: say that, not "robots"
            raise _Fault(rules.status, rules.reason, rules.detail)
        if isinstance(rules, str):
            raise _Fault(
                "failed",
                "robots-unreachable",
                f"{origin}/robots.txt: {rules} (RFC 9309: assume disallowed for now; "
                "retried by a later run with retry_failed)",
            )
        if not rules.can_fetch(url, ROBOTS_TOKEN):
            raise _Fault("rejected", "robots-disallowed", f"{origin}/robots.txt forbids this URL to {ROBOTS_TOKEN}")

    def _load(self, origin: str) -> Any:
        protego = require("protego")
        cfg = self._dl.config
        last = "unreachable"
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1)))
            try:
                status, body = self._dl._get_small(origin + "/robots.txt", _ROBOTS_MAX_BYTES)
            except _Fault as fault:
                if fault.reason in _HOST_FAULTS:
                    return fault
                last = fault.reason
                continue
            if 200 <= status < 300:
                rules = protego.Protego.parse(body.decode("utf-8", "replace"))
                delay = rules.crawl_delay(ROBOTS_TOKEN)
                if delay:
                    self._dl._gate(origin).delay = max(cfg.host_delay, min(float(delay), cfg.max_crawl_delay))
                return rules
            if 400 <= status < 500 and status != 429:
                return True  # no robots.txt: everything allowed (429 "too many requests" is an outage)
            last = f"HTTP {status}"
        return last


class Downloader:
    """Fetches URLs with the limits of a :class:`FetchConfig`. Thread-safe; share one per run."""

    def __init__(self, config: FetchConfig | None = None) -> None:
        self.config = config or FetchConfig()
        self._local = threading.local()
        self._gates: dict[str, _HostGate] = {}
        self._gates_lock = threading.Lock()
        self._robots = _RobotsCache(self)
        self._sessions: list[requests.Session] = []

    # -- public -------------------------------------------------------------------------------

    def fetch(self, url: str) -> FetchResult:
        """Download one image URL (never raises for network or content problems)."""
        return self._with_retries(url, self._fetch_image_once)

    def fetch_page(self, url: str) -> bytes:
        """Download a search-result page (no robots.txt check); raise :class:`PageFetchError`."""
        result = self._with_retries(url, self._fetch_page_once)
        if not result.ok or result.data is None:
            raise PageFetchError(result.reason, result.detail)
        return result.data

    def close(self) -> None:
        for s in self._sessions:
            s.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- machinery ----------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.config.user_agent
            session.headers["Accept"] = "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.9,*/*;q=0.5"
            session.max_redirects = self.config.max_redirects
            session.trust_env = False  # no proxies from the environment: every connection is checked here
            adapter = CheckedAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            with self._gates_lock:
                self._sessions.append(session)
        return session

    def _gate(self, origin: str) -> _HostGate:
        with self._gates_lock:
            gate = self._gates.get(origin)
            if gate is None:
                gate = self._gates[origin] = _HostGate(self.config.per_host, self.config.host_delay)
            return gate

    def _with_retries(self, url: str, once: Any) -> FetchResult:
        cfg = self.config
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result: FetchResult = once(url)
            except _Fault as fault:
                detail = fault.detail
                if fault.transient and attempt <= cfg.retries:
                    if fault.retry_after is None or fault.retry_after <= cfg.max_backoff:
                        wait = cfg.backoff * 2 ** (attempt - 1) * (0.75 + 0.5 * random.random())
                        if fault.retry_after is not None:
                            wait = max(wait, fault.retry_after)
                        time.sleep(min(wait, cfg.max_backoff))
                        continue
                    detail = (
                        f"{detail}; the server asks to wait {fault.retry_after:,.0f} s (Retry-After), longer than "
                        f"the {cfg.max_backoff:g} s this run waits at most: not retried now (a later run with retry_failed is)"
                    )
                result = FetchResult(url, fault.status, fault.reason, detail, http_status=fault.http_status)
            result.attempts = attempt
            result.elapsed = time.monotonic() - started
            return result

    @contextlib.contextmanager
    def _request(self, url: str, budget: _Budget) -> Iterator[tuple[requests.Response, float]]:
        """One GET (no redirects followed) once the host's turn comes; yields the response and the
        moment the attempt's time budget runs out, at which a watchdog cuts the connection."""
        cfg = self.config
        with self._gate(_origin(url)).slot():
            started = time.monotonic()
            deadline_at = started + budget.left
            try:
                with Attempt(deadline_at, cfg.allow_private_hosts) as attempt:
                    try:
                        response = self._session().get(
                            url, stream=True, allow_redirects=False, timeout=(cfg.timeout, cfg.timeout)
                        )
                    except requests.exceptions.RequestException as exc:
                        raise self._request_fault(exc, attempt, budget) from None
                    except (ValueError, UnicodeError) as exc:  # a URL requests or the resolver cannot take
                        raise _Fault("rejected", "bad-url", _short(exc)) from None
                    try:
                        yield response, deadline_at
                    except _Fault as fault:
                        if attempt.expired and fault.reason != "too-slow":
                            raise self._too_slow(budget) from None
                        raise
                    finally:
                        response.close()
            finally:
                budget.left -= time.monotonic() - started

    def _request_fault(self, exc: requests.exceptions.RequestException, attempt: Attempt, budget: _Budget) -> _Fault:
        blocked = blocked_detail(exc)
        if blocked is not None:
            return _Fault(
                "failed",
                "private-address",
                f"{blocked}: refused (SSRF protection); for a host you own run again with "
                "allow_private_hosts and retry_failed",
            )
        if attempt.expired:
            return self._too_slow(budget)
        if isinstance(exc, requests.exceptions.Timeout):
            return _Fault("failed", "timeout", _short(exc), transient=True)
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
            return _Fault("rejected", "bad-url", _short(exc))
        if isinstance(exc, requests.exceptions.SSLError):  # an untrusted or expired certificate, or no TLS at all
            return _Fault("failed", "tls-error", _short(exc))
        return _Fault("failed", "connection-error", _short(exc), transient=True)

    def _too_slow(self, budget: _Budget) -> _Fault:
        return _Fault("failed", "too-slow", f"no complete response after {budget.seconds:g} s", transient=False)

    def _read_body(
        self, response: requests.Response, limit: int, deadline_at: float, *, truncate: bool = False
    ) -> bytes:
        """Read the body within the deadline; over ``limit`` bytes is refused (or cut, ``truncate``)."""
        length = response.headers.get("Content-Length")
        if not truncate and length and length.isdigit() and int(length) > limit:
            raise _Fault("rejected", "too-large", f"Content-Length {int(length):,} exceeds {limit:,} bytes")
        chunks: list[bytes] = []
        total = 0
        raw = response.raw
        try:
            while True:
                if time.monotonic() > deadline_at:
                    raise _Fault(
                        "failed",
                        "too-slow",
                        f"no complete response after {self.config.attempt_deadline:g} s ({total:,} bytes received)",
                        transient=False,
                    )
                chunk = raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    if truncate:
                        chunks.append(chunk[: limit - (total - len(chunk))])
                        break
                    raise _Fault("rejected", "too-large", f"body exceeds {limit:,} bytes")
                chunks.append(chunk)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise _Fault("failed", "timeout", _short(exc), transient=True) from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as exc:
            raise _Fault("failed", "incomplete-body", _short(exc), transient=True) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Fault("failed", "connection-error", _short(exc), transient=True) from None
        return b"".join(chunks)

    @contextlib.contextmanager
    def _follow(self, url: str, *, check_robots: bool) -> Iterator[tuple[str, requests.Response, float]]:
        """The final (non-redirect) URL and response, following redirects one hop at a time, and the
        moment the attempt's one deadline (for every hop together) passes."""
        budget = _Budget(self.config.attempt_deadline)
        seen = {url}
        current = url
        for _ in range(self.config.max_redirects + 1):
            _check_url(current)
            if check_robots and self.config.robots:
                self._robots.check(current)
            with self._request(current, budget) as (response, deadline_at):
                if response.status_code in _REDIRECTS and response.headers.get("Location"):
                    target = urljoin(current, response.headers["Location"])
                    if target in seen:
                        raise _Fault("failed", "redirect-loop", f"{current} redirects back to {target}")
                    seen.add(target)
                    current = target
                    continue
                yield current, response, deadline_at
                return
        raise _Fault("failed", "too-many-redirects", f"more than {self.config.max_redirects} redirects")

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        reason = f"http-{status}"
        detail = f"HTTP {status} {response.reason or ''}".strip()
        if status in _TRANSIENT_STATUS:
            raise _Fault(
                "failed",
                reason,
                detail,
                transient=True,
                retry_after=_retry_after(response.headers.get("Retry-After")),
                http_status=status,
            )
        raise _Fault("failed", reason, detail, http_status=status)

    def _fetch_image_once(self, url: str) -> FetchResult:
        with self._follow(url, check_robots=True) as (final_url, response, deadline_at):
            self._raise_for_status(response)
            content_type = response.headers.get("Content-Type", "")
            directive = x_robots_forbids(response.headers.get("X-Robots-Tag"))
            if directive:
                raise _Fault("rejected", f"x-robots-{directive}", f"X-Robots-Tag: {response.headers['X-Robots-Tag']}")
            if content_type.lower().startswith(_NOT_IMAGE_TYPES):
                raise _Fault("rejected", "not-an-image", f"served as {content_type}")
            data = self._read_body(response, self.config.max_bytes, deadline_at)
            return FetchResult(
                url,
                "ok",
                data=data,
                final_url=final_url,
                http_status=response.status_code,
                content_type=content_type or None,
            )

    def _fetch_page_once(self, url: str) -> FetchResult:
        with self._follow(url, check_robots=False) as (final_url, response, deadline_at):
            self._raise_for_status(response)
            data = self._read_body(response, self.config.max_page_bytes, deadline_at)
            return FetchResult(url, "ok", data=data, final_url=final_url, http_status=response.status_code)

    def _get_small(self, url: str, limit: int) -> tuple[int, bytes]:
        """GET ``url`` (redirects followed) and return status and at most ``limit`` bytes."""
        with self._follow(url, check_robots=False) as (_, response, deadline_at):
            if response.status_code >= 300:
                return response.status_code, b""
            return response.status_code, self._read_body(response, limit, deadline_at, truncate=True)


def read_local_file(path: str | Path, max_bytes: int) -> FetchResult:
    """Read an image file to import, with the same size cap and result type as a download.

    Only regular files are read, and never more than ``max_bytes`` of them whatever size they report
    (a FIFO, ``/dev/zero`` or a link to it is ``rejected``/``not-a-file``; a link that loops or
    leads nowhere is ``failed`` (``symlink-loop``, ``missing``), so a later run with ``retry_failed``
    tries it again once it is fixed).
    """
    from cnnlab.imagedata.decode import read_regular_file

    p = Path(path)
    try:
        url = p.resolve().as_uri()
    except (OSError, RuntimeError, ValueError):  # a link to itself cannot be resolved
        url = p.absolute().as_uri()
    try:
        data = read_regular_file(p, max_bytes)
    except ImageDecodeError as exc:
        status = "rejected" if exc.reason in ("not-a-file", "too-large") else "failed"
        return FetchResult(url, status, exc.reason, exc.detail)
    return FetchResult(url, "ok", data=data, final_url=url, attempts=1)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
