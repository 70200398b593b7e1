"""The engines' parsing against saved result pages (tests/helpers), and their plumbing.

No live engine is contacted: pages come from files or from a server on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cnnlab.collect import (
    CollectConfig,
    CollectError,
    FetchConfig,
    PageFetchError,
    SearchHit,
    collect_images,
    make_engine,
    read_manifest,
)
from cnnlab.collect.engines import BaiduEngine, BingEngine, DuckDuckGoEngine, FlickrEngine, GoogleEngine
from tests.helpers.fakeweb import FakeWeb, Route, make_image

FIXTURES = Path(__file__).parents[1] / "helpers"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Pages:
    """A fetch_page that serves fixtures by URL pattern and records what was asked."""

    def __init__(self, *rules: tuple[str, bytes]) -> None:
        self.rules = rules
        self.asked: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.asked.append(url)
        for pattern, body in self.rules:
            if re.search(pattern, url):
                return body
        raise PageFetchError("http-404", url)


# -- Bing ---------------------------------------------------------------------------------------


def test_bing_parses_urls_source_pages_and_titles() -> None:
    hits = BingEngine().parse_page(fixture("bing_async.html"))
    assert hits == [
        SearchHit("https://images.example.org/cats/tabby.jpg", "https://www.example.org/cats/tabby.html", None, "A tabby cat"),
        SearchHit("https://cdn.example.com/photos/house-cat.jpg?w=1200&h=800", "https://blog.example.com/2021/house-cat", None, "House cat"),
        SearchHit("https://upload.example.net/cat.png", "https://wiki.example.net/File:Cat.png", None, "Cat (PNG)"),
    ]
    assert BingEngine().parse_page(fixture("bing_async_empty.html")) == []


def test_bing_search_pages_lazily_and_stops_at_the_end() -> None:
    pages = Pages((r"first=0\b", fixture("bing_async.html")), (r"first=", fixture("bing_async_empty.html")))
    engine = BingEngine(base_url="http://127.0.0.1:9/mirror")
    hits = list(engine.search("tabby cat", limit=100, filters={"license": "creativecommons"}, fetch_page=pages))
    assert len(hits) == 3 and {h.license for h in hits} == {"creativecommons (bing filter)"}
    assert pages.asked == [
        "http://127.0.0.1:9/mirror/images/async?q=tabby+cat&first=0&qft=+filterui:licenseType-Any",
        "http://127.0.0.1:9/mirror/images/async?q=tabby+cat&first=20&qft=+filterui:licenseType-Any",
    ]
    pages.asked.clear()
    assert len(list(engine.search("cat", limit=2, filters={}, fetch_page=pages))) == 2
    assert len(pages.asked) == 1


def test_bing_stops_when_pages_repeat() -> None:
    pages = Pages((r"first=", fixture("bing_async.html")))  # every page the same, as Bing does past the end
    assert len(list(BingEngine().search("cat", limit=1000, filters={}, fetch_page=pages))) == 3
    assert len(pages.asked) == 3  # first page + two stale ones


def test_bing_rejects_unknown_filter_values() -> None:
    with pytest.raises(CollectError, match="size"):
        list(BingEngine().search("cat", limit=5, filters={"size": "gigantic"}, fetch_page=Pages()))


# -- Baidu --------------------------------------------------------------------------------------


def test_baidu_decodes_obfuscated_urls_and_keeps_plain_ones() -> None:
    hits = BaiduEngine().parse_page(fixture("baidu_acjson.json"))
    assert [(h.url, h.source_page) for h in hits] == [
        ("https://photos.example.cn/cat/001.jpg", "https://www.example.cn/cats/1.html"),
        ("https://img1.baidu.com/it/u=3,4&fm=253&hover=1", None),
        ("https://plain.example.cn/cat-002.png", "https://plain.example.cn/page/2"),
    ]


def test_baidu_has_no_license_filter() -> None:
    with pytest.raises(CollectError, match="license"):
        BaiduEngine().page_urls("cat", 10, {"license": "creativecommons"})


def test_baidu_through_a_local_server(tmp_path: Path) -> None:
    web = FakeWeb().start()
    try:
        for i in range(3):
            web.add(f"/b/{i}.jpg", make_image(i))
        payload = {"data": [{"objURL": web.url(f"/b/{i}.jpg"), "fromURL": web.url("/p")} for i in range(3)] + [{}]}
        web.add("/search/acjson", Route(body=json.dumps(payload).encode(), content_type="application/json"))
        out = tmp_path / "data"
        result = collect_images(CollectConfig(out, ["cat"], 5, engine="baidu", engine_url=web.base, min_size=32,
                         fetch=FetchConfig(timeout=1, retries=0, per_host=8, host_delay=0, allow_private_hosts=True)))
        assert result.classes[0].ok == 3
        assert {r["source_page"] for r in read_manifest(out / "manifest.jsonl")} == {web.url("/p")}
        assert sum(n for p, n in web.hits.items() if p.startswith("/search/acjson")) == 3  # 1 page + 2 stale
    finally:
        web.stop()


# -- Google -------------------------------------------------------------------------------------


def test_google_parser_on_saved_pages() -> None:
    hits = GoogleEngine().parse_page(fixture("google_search.html"))
    assert [h.url for h in hits] == ["https://images.example.org/google/cat-1.jpg", "https://static.example.com/img/cat_2.png"]
    assert GoogleEngine().parse_page(fixture("google_empty.html")) == []
    assert "broken upstream" in GoogleEngine.no_results_hint


# -- Flickr -------------------------------------------------------------------------------------


def test_flickr_parses_sizes_license_and_page() -> None:
    pages = Pages(
        (r"method=flickr\.photos\.search", fixture("flickr_search.json")),
        (r"photo_id=52001", fixture("flickr_getsizes_52001.json")),
        (r"photo_id=52002", fixture("flickr_getsizes_52002.json")),
    )
    engine = FlickrEngine(api_key="test-key", base_url="http://127.0.0.1:9")
    hits = list(engine.search("tabby", limit=2, filters={"license": "creativecommons"}, fetch_page=pages))
    assert hits == [
        SearchHit("https://live.staticflickr.com/65535/52001_abc123_b.jpg", "https://www.flickr.com/photos/12345678@N00/52001", "CC BY 2.0", "Tabby on a wall"),
        SearchHit("https://live.staticflickr.com/65535/52002_def456_b.jpg", "https://www.flickr.com/photos/87654321@N01/52002", "All Rights Reserved", "Sleeping cat"),
    ]
    assert all(u.startswith("http://127.0.0.1:9/services/rest/?") for u in pages.asked)
    assert "license=1%2C2%2C3%2C4%2C5%2C6%2C9%2C10" in pages.asked[0] and "text=tabby" in pages.asked[0]


def test_flickr_errors_are_plain() -> None:
    with pytest.raises(CollectError, match="API key"):
        FlickrEngine(api_key=None)
    with pytest.raises(PageFetchError, match="Invalid API Key"):
        FlickrEngine(api_key="bad").parse_page(fixture("flickr_bad_key.json"))
    with pytest.raises(CollectError, match="unsupported filter"):
        FlickrEngine(api_key="k").page_urls("cat", 5, {"size": "large"})


def test_flickr_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLICKR_API_KEY", "env-key")
    web = FakeWeb().start()
    try:
        web.add("/services/rest/", Route(body=fixture("flickr_bad_key.json"), content_type="application/json"))
        result = collect_images(CollectConfig(tmp_path / "d", ["cat"], 1, engine="flickr", engine_url=web.base,
                         fetch=FetchConfig(timeout=1, retries=0, host_delay=0, allow_private_hosts=True)))
        assert "Invalid API Key" in result.classes[0].notes[0]
        assert any("api_key=env-key" in p for p in web.hits)
    finally:
        web.stop()


# -- DuckDuckGo (ddgs) --------------------------------------------------------------------------


class FakeDDGS:
    """Stands in for ``ddgs.DDGS``: answers ``images()`` from the saved fixture, one page only."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[dict] = []
        self.error = error

    def images(self, query: str, **kwargs: object) -> list[dict]:
        self.calls.append({"query": query, **kwargs})
        if self.error:
            raise self.error
        if kwargs.get("page", 1) > 1:
            raise RuntimeError("No results found.")
        return json.loads(fixture("ddg_images.json"))


def test_ddg_maps_results_and_filters() -> None:
    client = FakeDDGS()
    engine = DuckDuckGoEngine(client_factory=lambda: client)
    hits = list(engine.search("cat", limit=10, filters={"license": "creativecommons", "size": "large"}, fetch_page=Pages()))
    assert hits == [
        SearchHit("https://images.example.org/ddg/tabby.jpg", "https://www.example.org/tabby", "creativecommons (ddg filter)", "Tabby cat"),
        SearchHit("https://cdn.example.com/ddg/cat.png", "https://cdn.example.com/page", "creativecommons (ddg filter)", "Cat"),
    ]
    first = client.calls[0]
    assert (first["backend"], first["license_image"], first["size"], first["page"]) == ("duckduckgo", "any", "Large", 1)
    assert len(client.calls) == 2  # asked for a second page, which had nothing


def test_ddg_errors() -> None:
    engine = DuckDuckGoEngine(client_factory=lambda: FakeDDGS(RuntimeError("No results found.")))
    assert list(engine.search("zzz", limit=5, filters={}, fetch_page=Pages())) == []
    engine = DuckDuckGoEngine(client_factory=lambda: FakeDDGS(TimeoutError("timed out")))
    with pytest.raises(PageFetchError, match="timed out"):
        list(engine.search("cat", limit=5, filters={}, fetch_page=Pages()))
    with pytest.raises(CollectError, match="unsupported filter"):
        list(DuckDuckGoEngine(client_factory=FakeDDGS).search("cat", limit=5, filters={"color": "red"}, fetch_page=Pages()))


# -- registry -----------------------------------------------------------------------------------


def test_make_engine() -> None:
    assert make_engine("bing").name == "bing"
    assert make_engine("DuckDuckGo").name == "ddg"
    assert make_engine("google", base_url="http://127.0.0.1:1").rebase("https://www.google.com/search?q=x") == (
        "http://127.0.0.1:1/search?q=x")
    with pytest.raises(CollectError, match="unknown engine"):
        make_engine("altavista")
