"""The downloader against a local server: every fault ends as a result with a reason, in bounded time."""

from __future__ import annotations

import gzip
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cnnlab.collect import Downloader, FetchConfig, PageFetchError
from cnnlab.collect.download import x_robots_forbids
from tests.helpers.fakeweb import FakeWeb, Route, make_image

FAST = FetchConfig(timeout=0.5, deadline=1.0, retries=1, backoff=0.01, per_host=8, host_delay=0.0, max_bytes=200_000,
                   allow_private_hosts=True)  # the fake web is on 127.0.0.1
IMG = make_image(1)


@pytest.fixture
def web():
    server = FakeWeb().start()
    yield server
    server.stop()


def fetch(web: FakeWeb, path: str, route: Route | bytes | None = None, config: FetchConfig = FAST):
    if route is not None:
        web.add(path, route)
    with Downloader(config) as dl:
        return dl.fetch(web.url(path))


def test_ok_returns_the_bytes_and_names_cnnlab(web):
    result = fetch(web, "/a.jpg", IMG)
    assert result.ok and result.data == IMG
    assert result.http_status == 200 and result.attempts == 1
    (agent,) = {ua for ua in web.user_agents if ua}
    assert "cnnlab" in agent


@pytest.mark.parametrize(
    ("route", "status", "reason", "attempts"),
    [
        (Route(status=404, body=b"gone", content_type="text/html"), "failed", "http-404", 1),
        (Route(status=500, body=b"oops", content_type="text/html"), "failed", "http-500", 2),
        (Route(body=IMG, declared_length=len(IMG) + 5000), "failed", "incomplete-body", 2),
        (Route(body=b"<html><body>hi</body></html>", content_type="text/html"), "rejected", "not-an-image", 1),
        (Route(body=b"x" * 300_000), "rejected", "too-large", 1),
        (Route(body=b"x" * 300_000, send_length=False), "rejected", "too-large", 1),
        (Route(body=gzip.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "gzip"}), "rejected", "too-large", 1),
        (Route(body=IMG, headers={"X-Robots-Tag": "noai"}), "rejected", "x-robots-noai", 1),
        (Route(body=IMG, headers={"X-Robots-Tag": "cnnlab: noimageai"}), "rejected", "x-robots-noimageai", 1),
    ],
    ids=["404", "500", "truncated", "html", "over-cap-declared", "over-cap-streamed", "gzip-bomb", "noai",
         "noimageai-for-us"],
)
def test_faults_end_with_a_reason(web, route, status, reason, attempts):
    result = fetch(web, "/f.jpg", route)
    assert (result.status, result.reason, result.attempts) == (status, reason, attempts)
    assert result.data is None


def test_x_robots_for_another_bot_is_ignored(web):
    result = fetch(web, "/g.jpg", Route(body=IMG, headers={"X-Robots-Tag": "googlebot: noai, noindex"}))
    assert result.ok


def test_timeout_is_bounded_and_retried(web):
    started = time.monotonic()
    result = fetch(web, "/slow.jpg", Route(body=IMG, delay=3.0))
    assert (result.status, result.reason, result.attempts) == ("failed", "timeout", 2)
    assert time.monotonic() - started < 2.5


def test_slow_drip_is_cut_at_the_deadline(web):
    started = time.monotonic()
    result = fetch(web, "/drip.jpg", Route(body=IMG, drip=0.02))  # would take ~30 s
    assert (result.status, result.reason) == ("failed", "too-slow")
    assert time.monotonic() - started < 2.5


def test_redirect_loop_and_long_chains(web):
    web.add("/loop-a", Route(location="/loop-b"))
    web.add("/loop-b", Route(location="/loop-a"))
    assert fetch(web, "/loop-a").reason == "redirect-loop"
    for i in range(8):
        web.add(f"/hop{i}", Route(location=f"/hop{i + 1}"))
    web.add("/hop8", IMG)
    assert fetch(web, "/hop0").reason == "too-many-redirects"
    ok = fetch(web, "/hop4")
    assert ok.ok and ok.final_url == web.url("/hop8")


def test_only_http_and_https(web):
    web.add("/to-file", Route(location="file:///etc/passwd"))
    with Downloader(FAST) as dl:
        assert dl.fetch("file:///etc/passwd").reason == "bad-scheme"
        assert dl.fetch("ftp://127.0.0.1/x.jpg").reason == "bad-scheme"
        assert dl.fetch(web.url("/to-file")).reason == "bad-scheme"


def test_robots_txt_forbids_without_fetching_the_image(web):
    web.robots = "User-agent: *\nDisallow: /private/\n"
    web.add("/private/x.jpg", IMG)
    web.add("/public/x.jpg", IMG)
    with Downloader(FAST) as dl:
        denied = dl.fetch(web.url("/private/x.jpg"))
        allowed = dl.fetch(web.url("/public/x.jpg"))
    assert (denied.status, denied.reason) == ("rejected", "robots-disallowed")
    assert allowed.ok
    assert web.fetches("/private/x.jpg") == 0
    assert web.fetches("/robots.txt") == 1  # cached per host


def test_robots_group_for_cnnlab(web):
    web.robots = "User-agent: cnnlab\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
    assert fetch(web, "/a.jpg", IMG).reason == "robots-disallowed"


def test_unreachable_robots_txt_means_disallow(web):
    web.robots, web.robots_status = "", 503
    result = fetch(web, "/a.jpg", IMG, FetchConfig(timeout=0.5, retries=0, per_host=8, host_delay=0, allow_private_hosts=True))
    # disallowed for now, but an outage is "failed" (retryable), never "rejected" for ever
    assert (result.status, result.reason) == ("failed", "robots-unreachable")
    assert web.fetches("/a.jpg") == 0


def test_retry_after_a_transient_error(web):
    result = fetch(web, "/flaky.jpg", Route(body=IMG, fail_times=1))
    assert result.ok and result.attempts == 2


def test_per_host_concurrency_is_capped():
    web = FakeWeb(latency=0.05).start()
    try:
        for i in range(12):
            web.add(f"/{i}.jpg", IMG)
        config = FetchConfig(timeout=2, retries=0, per_host=2, host_delay=0.0, allow_private_hosts=True)
        with Downloader(config) as dl, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(dl.fetch, [web.url(f"/{i}.jpg") for i in range(12)]))
        assert all(r.ok for r in results)
        assert web.max_concurrent == 2
    finally:
        web.stop()


def test_per_host_delay_spaces_requests(web):
    for i in range(5):
        web.add(f"/{i}.jpg", IMG)
    config = FetchConfig(timeout=2, retries=0, per_host=8, host_delay=0.1, allow_private_hosts=True)
    started = time.monotonic()
    with Downloader(config) as dl, ThreadPoolExecutor(5) as pool:
        results = list(pool.map(dl.fetch, [web.url(f"/{i}.jpg") for i in range(5)]))
    assert all(r.ok for r in results)
    # robots.txt + 5 images = 6 request starts, 0.1 s apart
    assert time.monotonic() - started >= 0.45


def test_crawl_delay_from_robots_txt(web):
    web.robots = "User-agent: *\nCrawl-delay: 0.2\n"
    for i in range(3):
        web.add(f"/{i}.jpg", IMG)
    config = FetchConfig(timeout=2, retries=0, per_host=8, host_delay=0.0, allow_private_hosts=True)
    started = time.monotonic()
    with Downloader(config) as dl:
        assert all(dl.fetch(web.url(f"/{i}.jpg")).ok for i in range(3))
    assert time.monotonic() - started >= 0.4


def test_fetch_page_raises_with_the_reason(web):
    with Downloader(FAST) as dl, pytest.raises(PageFetchError) as info:
        dl.fetch_page(web.url("/nothing-here"))
    assert info.value.reason == "http-404"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("noindex, nofollow", None),
        ("noai", "noai"),
        ("noindex, noimageai", "noimageai"),
        ("googlebot: noai", None),
        ("googlebot: noindex, cnnlab: noai", "noai"),
        ("unavailable_after: 25 Jun 2030 15:00:00 PST, noai", "noai"),
        ("*: NOAI", "noai"),
    ],
)
def test_x_robots_tag_parsing(value, expected):
    assert x_robots_forbids(value) == expected
