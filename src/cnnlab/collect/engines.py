"""Search engines: search terms in, candidate image URLs (with source page and license) out.

Bing, Baidu, Google and Flickr wrap icrawler 0.6.10's feeders (which build result-page URLs,
filters included) and parsers (which pull image URLs out of those pages); the pages themselves are
fetched through the run's :class:`~cnnlab.collect.download.Downloader` (timeouts, caps, retries,
per-host politeness, honest User-Agent), and images are never downloaded by icrawler. DuckDuckGo
goes through the ``ddgs`` package. ``icrawler`` and ``ddgs`` are imported only when used.

Every engine takes ``base_url`` (or, for DuckDuckGo, a client factory) so it can be pointed at a
mirror or a local test server.
"""

from __future__ import annotations

import html
import json
import queue
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import quote_plus, urlsplit, urlunsplit

from cnnlab.collect.base import CollectError, Engine, PageFetcher, PageFetchError, SearchHit, require

#: Flickr license ids (flickr.photos.licenses.getInfo).
FLICKR_LICENSES: dict[str, str] = {
    "0": "All Rights Reserved",
    "1": "CC BY-NC-SA 2.0",
    "2": "CC BY-NC 2.0",
    "3": "CC BY-NC-ND 2.0",
    "4": "CC BY 2.0",
    "5": "CC BY-SA 2.0",
    "6": "CC BY-ND 2.0",
    "7": "No known copyright restrictions",
    "8": "United States Government Work",
    "9": "CC0 1.0",
    "10": "Public Domain Mark 1.0",
}

#: The license filter values cnnlab accepts (Bing's and Google's vocabulary) as Flickr ids.
_FLICKR_LICENSE_FILTER: dict[str, str] = {
    "creativecommons": "1,2,3,4,5,6,9,10",
    "publicdomain": "7,8,9,10",
    "noncommercial": "1,2,3,4,5,6,9,10",
    "commercial": "4,5,6,7,8,9,10",
    "noncommercial,modify": "1,2,4,5,9,10",
    "commercial,modify": "4,5,7,8,9,10",
}


class _Response:
    """Just enough of ``requests.Response`` for icrawler's parsers."""

    def __init__(self, content: bytes, url: str = "") -> None:
        self.content = content
        self.url = url
        self.status_code = 200

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _FetchSession:
    """Stands in for the ``requests.Session`` icrawler's parsers use for follow-up requests."""

    def __init__(self, fetch_page: PageFetcher, rebase: Callable[[str], str]) -> None:
        self._fetch = fetch_page
        self._rebase = rebase

    def get(self, url: str, **_: Any) -> _Response:
        return _Response(self._fetch(self._rebase(url)), url)


def _signal() -> Any:
    signal = require("icrawler.utils").Signal()
    signal.set(reach_max_num=False, feeder_exited=False, parser_exited=False)
    return signal


class IcrawlerEngine:
    """Base of the engines that drive an icrawler feeder and parser (no icrawler threads)."""

    name: ClassVar[str] = ""
    no_results_hint: ClassVar[str] = ""
    #: Engines whose result pages repeat instead of ending: stop after this many pages with nothing new.
    stale_pages: ClassVar[int] = 2

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None

    # -- to implement ---------------------------------------------------------------------------

    def _feeder_cls(self) -> Any:
        raise NotImplementedError

    def _parser_cls(self) -> Any:
        raise NotImplementedError

    def _feed_kwargs(self, query: str, limit: int, filters: Mapping[str, str]) -> dict[str, Any]:
        return {"keyword": quote_plus(query), "offset": 0, "max_num": min(limit, 1000), "filters": dict(filters) or None}

    def _hits(self, parser: Any, response: _Response, filters: Mapping[str, str]) -> list[SearchHit]:
        return [SearchHit(str(task["file_url"])) for task in parser.parse(response) or [] if task.get("file_url")]

    # -- shared ---------------------------------------------------------------------------------

    def rebase(self, url: str) -> str:
        """``url`` with its scheme and host replaced by ``base_url`` (if one was given)."""
        if not self.base_url:
            return url
        base = urlsplit(self.base_url)
        parts = urlsplit(url)
        path = base.path.rstrip("/") + parts.path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))

    def page_urls(self, query: str, limit: int, filters: Mapping[str, str]) -> list[str]:
        """The result-page URLs icrawler's feeder would crawl (before rebasing)."""
        feeder = self._feeder_cls()(1, _signal(), None)
        feeder.out_queue = queue.Queue()  # unbounded: feed() runs synchronously here
        try:
            feeder.feed(**self._feed_kwargs(query, limit, filters))
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise CollectError(f"{self.name}: unsupported filter {dict(filters)}: {exc}") from None
        return list(feeder.out_queue.queue)

    def check_filters(self, filters: Mapping[str, str]) -> None:
        """Raise :class:`CollectError` now for a filter this engine cannot apply."""
        self.page_urls("check", 1, filters)

    def parse_page(
        self, body: bytes, *, filters: Mapping[str, str] | None = None, fetch_page: PageFetcher | None = None
    ) -> list[SearchHit]:
        """Image URLs on one result page (``fetch_page`` serves any follow-up requests)."""
        session = _FetchSession(fetch_page, self.rebase) if fetch_page else None
        parser = self._parser_cls()(1, _signal(), session)
        hits = self._hits(parser, _Response(body), filters or {})
        license_filter = (filters or {}).get("license")
        if license_filter:
            hits = [
                h if h.license else SearchHit(h.url, h.source_page, f"{license_filter} ({self.name} filter)", h.title)
                for h in hits
            ]
        return hits

    def search(
        self, query: str, *, limit: int, filters: Mapping[str, str], fetch_page: PageFetcher
    ) -> Iterator[SearchHit]:
        """Hits for ``query``, fetching result pages lazily, at most ``limit``, no repeats."""
        seen: set[str] = set()
        stale = 0
        for page_url in self.page_urls(query, limit, filters):
            body = fetch_page(self.rebase(page_url))
            hits = self.parse_page(body, filters=filters, fetch_page=fetch_page)
            if not hits:
                return
            new = [h for h in hits if h.url not in seen]
            if not new:
                stale += 1
                if stale >= self.stale_pages:
                    return
                continue
            stale = 0
            for hit in new:
                seen.add(hit.url)
                yield hit
                if len(seen) >= limit:
                    return


class BingEngine(IcrawlerEngine):
    """Bing images (icrawler's BingFeeder/BingParser; filters: type, color, size, license, layout, date)."""

    name = "bing"

    def _feeder_cls(self) -> Any:
        return require("icrawler.builtin.bing").BingFeeder

    def _parser_cls(self) -> Any:
        return require("icrawler.builtin.bing").BingParser

    def _hits(self, parser: Any, response: _Response, filters: Mapping[str, str]) -> list[SearchHit]:
        # icrawler's parser keeps only URLs up to ".jpg" (PNG, WebP and query strings are lost); the
        # same `m` attribute holds the full image URL (murl), its page (purl) and a title (t). Use
        # those, in page order, and keep any URL icrawler found that they do not cover.
        found = [str(t["file_url"]) for t in parser.parse(response) or [] if t.get("file_url")]
        meta = _bing_meta(response.content)
        hits = [SearchHit(m["murl"], m.get("purl"), None, m.get("t")) for m in meta]
        hits.extend(SearchHit(u) for u in found if not any(m["murl"].startswith(u) for m in meta))
        return hits


def _bing_meta(content: bytes) -> list[dict[str, str]]:
    soup = require("bs4").BeautifulSoup(content.decode("utf-8", "ignore"), "lxml")
    found = []
    for div in soup.find_all("div", class_="imgpt"):
        anchor = div.find("a")
        if anchor is None or not anchor.get("m"):
            continue
        try:
            m = json.loads(html.unescape(str(anchor["m"])))
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(m, dict) and isinstance(m.get("murl"), str) and m["murl"].startswith(("http://", "https://")):
            found.append({k: str(v) for k, v in m.items() if k in ("murl", "purl", "t") and v})
    return found


class BaiduEngine(IcrawlerEngine):
    """Baidu images (icrawler's BaiduFeeder/BaiduParser; filters: type, color, size)."""

    name = "baidu"

    def _feeder_cls(self) -> Any:
        return require("icrawler.builtin.baidu").BaiduFeeder

    def _parser_cls(self) -> Any:
        return require("icrawler.builtin.baidu").BaiduParser

    def _hits(self, parser: Any, response: _Response, filters: Mapping[str, str]) -> list[SearchHit]:
        urls = [str(t["file_url"]) for t in parser.parse(response) or [] if t.get("file_url")]
        try:
            items = json.loads(response.content.decode("utf-8", "ignore").replace("\\'", "'"), strict=False)["data"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return [SearchHit(u) for u in urls]
        # icrawler yields one URL per item with objURL or hoverURL, in order: pair them up to fix
        # plain (unobfuscated) objURLs, which its decoder would garble, and add the source page.
        items = [i for i in items if isinstance(i, dict) and ("objURL" in i or "hoverURL" in i)]
        if len(items) != len(urls):
            return [SearchHit(u) for u in urls]
        hits = []
        for url, item in zip(urls, items):
            raw = str(item.get("objURL") or "")
            if raw.startswith(("http://", "https://")):
                url = raw
            page = str(item.get("fromURL") or "")
            if page and not page.startswith(("http://", "https://")):
                page = parser._decode_url(page)
            title = item.get("fromPageTitleEnc") or None
            hits.append(SearchHit(url, page if page.startswith(("http://", "https://")) else None, None, title))
        return hits


class GoogleEngine(IcrawlerEngine):
    """Google images through icrawler's GoogleParser, which is broken upstream (usually finds nothing)."""

    name = "google"
    no_results_hint = "Google's icrawler parser is broken upstream; try the bing or ddg engine"

    def _feeder_cls(self) -> Any:
        return require("icrawler.builtin.google").GoogleFeeder

    def _parser_cls(self) -> Any:
        return require("icrawler.builtin.google").GoogleParser

    def _feed_kwargs(self, query: str, limit: int, filters: Mapping[str, str]) -> dict[str, Any]:
        return {"keyword": query, "offset": 0, "max_num": min(limit, 1000), "filters": dict(filters) or None}


class FlickrEngine(IcrawlerEngine):
    """Flickr's REST API (needs an API key; filters: license, type=photo)."""

    name = "flickr"
    stale_pages = 1

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        super().__init__(base_url)
        if not api_key:
            raise CollectError(
                "Flickr needs an API key: give one (api_key) or set FLICKR_API_KEY "
                "(get one at https://www.flickr.com/services/apps/create/)"
            )
        self.api_key = api_key

    def _feeder_cls(self) -> Any:
        return require("icrawler.builtin.flickr").FlickrFeeder

    def _parser_cls(self) -> Any:
        return require("icrawler.builtin.flickr").FlickrParser

    def _feed_kwargs(self, query: str, limit: int, filters: Mapping[str, str]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "apikey": self.api_key,
            "max_num": min(limit, 4000),
            "text": query,
            "sort": "relevance",
            "extras": "license",
            "per_page": max(10, min(100, limit)),
        }
        for key, value in filters.items():
            if key == "license":
                if value not in _FLICKR_LICENSE_FILTER:
                    raise CollectError(f"flickr: license must be one of {', '.join(_FLICKR_LICENSE_FILTER)}")
                kwargs["license"] = _FLICKR_LICENSE_FILTER[value]
            elif key == "type" and value == "photo":
                kwargs["content_type"] = 1
            else:
                raise CollectError(f"flickr: unsupported filter {key}={value} (supported: license, type=photo)")
        return kwargs

    def parse_page(
        self, body: bytes, *, filters: Mapping[str, str] | None = None, fetch_page: PageFetcher | None = None
    ) -> list[SearchHit]:
        try:
            content = json.loads(body.decode("utf-8", "ignore"))
        except json.JSONDecodeError:
            raise PageFetchError("bad-response", "Flickr did not answer with JSON") from None
        if content.get("stat") != "ok":
            raise PageFetchError("engine-error", f"Flickr: {content.get('message') or content.get('stat')}")
        return super().parse_page(body, filters=None, fetch_page=fetch_page)

    def _hits(self, parser: Any, response: _Response, filters: Mapping[str, str]) -> list[SearchHit]:
        sizes = [
            "original", "large 2048", "large 1600", "large", "medium 800", "medium 640", "medium",
            "small 320", "small", "thumbnail", "large square", "square",
        ]  # fmt: skip
        hits = []
        for task in parser.parse(response, apikey=self.api_key, size_preference=sizes) or []:
            photo = task.get("meta") or {}
            page = None
            if photo.get("owner") and photo.get("id"):
                page = f"https://www.flickr.com/photos/{photo['owner']}/{photo['id']}"
            lic = FLICKR_LICENSES.get(str(photo.get("license"))) if "license" in photo else None
            hits.append(SearchHit(str(task["file_url"]), page, lic, photo.get("title") or None))
        return hits


class DuckDuckGoEngine:
    """DuckDuckGo images through the ``ddgs`` package (no key; filters: size, type, license)."""

    name = "ddg"
    no_results_hint = ""

    _SIZE = {"small": "Small", "medium": "Medium", "large": "Large", "extralarge": "Wallpaper"}
    _TYPE = {"photo": "photo", "clipart": "clipart", "animated": "gif", "transparent": "transparent", "linedrawing": "line"}
    _LICENSE = {
        "creativecommons": "any",
        "publicdomain": "Public",
        "noncommercial": "Share",
        "commercial": "ShareCommercially",
        "noncommercial,modify": "Modify",
        "commercial,modify": "ModifyCommercially",
    }

    def __init__(
        self,
        client_factory: Callable[[], Any] | None = None,
        *,
        timeout: float = 10.0,
        region: str = "us-en",
        safesearch: str = "moderate",
    ) -> None:
        self._client_factory = client_factory
        self.timeout = timeout
        self.region = region
        self.safesearch = safesearch

    def _client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        return require("ddgs").DDGS(timeout=max(1, round(self.timeout)))

    def check_filters(self, filters: Mapping[str, str]) -> None:
        """Raise :class:`CollectError` now for a filter DuckDuckGo cannot apply."""
        self.ddgs_kwargs(filters)

    def ddgs_kwargs(self, filters: Mapping[str, str]) -> dict[str, str]:
        """cnnlab filters as ``DDGS.images`` keyword arguments."""
        table = {"size": ("size", self._SIZE), "type": ("type_image", self._TYPE), "license": ("license_image", self._LICENSE)}
        kwargs = {}
        for key, value in filters.items():
            if key not in table or value not in table[key][1]:
                choices = ", ".join(f"{k}={'|'.join(v)}" for k, (_, v) in table.items())
                raise CollectError(f"ddg: unsupported filter {key}={value} (supported: {choices})")
            kwargs[table[key][0]] = table[key][1][value]
        return kwargs

    def search(
        self, query: str, *, limit: int, filters: Mapping[str, str], fetch_page: PageFetcher
    ) -> Iterator[SearchHit]:
        kwargs = self.ddgs_kwargs(filters)
        license_note = f"{filters['license']} (ddg filter)" if "license" in filters else None
        client = self._client()
        seen: set[str] = set()
        page = 1
        while len(seen) < limit:
            try:
                results = client.images(
                    query,
                    region=self.region,
                    safesearch=self.safesearch,
                    page=page,
                    max_results=None,
                    backend="duckduckgo",
                    **kwargs,
                )
            except Exception as exc:  # noqa: BLE001 - ddgs raises DDGSException for "no results" as for errors
                message = str(exc)
                if "no results" in message.lower():
                    return
                raise PageFetchError("engine-error", f"ddgs: {type(exc).__name__}: {message}") from None
            new = [r for r in results or [] if isinstance(r.get("image"), str) and r["image"] not in seen]
            if not new:
                return
            for r in new:
                seen.add(r["image"])
                yield SearchHit(r["image"], r.get("url") or None, license_note, r.get("title") or None)
                if len(seen) >= limit:
                    return
            page += 1


#: Engine names and their classes (``duckduckgo`` is an alias of ``ddg``).
ENGINES: dict[str, type] = {
    "bing": BingEngine,
    "baidu": BaiduEngine,
    "flickr": FlickrEngine,
    "google": GoogleEngine,
    "ddg": DuckDuckGoEngine,
}


def make_engine(
    name: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> Engine:
    """An engine by name. ``base_url`` points an icrawler engine elsewhere (mirror, test server)."""
    key = {"duckduckgo": "ddg"}.get(name.lower(), name.lower())
    if key == "flickr":
        return FlickrEngine(api_key=api_key, base_url=base_url)
    if key == "ddg":
        if base_url:
            raise CollectError("ddg does not take a base URL (ddgs talks to DuckDuckGo itself)")
        return DuckDuckGoEngine(timeout=timeout)
    if key in ENGINES:
        return ENGINES[key](base_url=base_url)
    raise CollectError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}, urls, folder")
