"""A fake web for the collect tests: a threaded HTTP server on 127.0.0.1 that plays a search engine
(Bing-style result pages) and image hosts, with every fault the downloader must survive.

Not a test module: imported by the collect and imagedata tests (``from tests.helpers.fakeweb import ...``).
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import random
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

# -- images -------------------------------------------------------------------------------------


def make_image(seed: int, size: tuple[int, int] = (96, 96), fmt: str = "JPEG", **save: object) -> bytes:
    """A small image whose perceptual hash differs a lot from other seeds' (>= 20 of 64 bits for
    seeds 0-59) and hardly at all from its resized copies (random 8x8 colours, bicubic-upscaled)."""
    rng = random.Random(seed)
    small = Image.new("RGB", (8, 8))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64)])
    img = small.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def resized(data: bytes, size: tuple[int, int], fmt: str = "JPEG", quality: int = 85) -> bytes:
    """``data`` re-encoded at another size (a near duplicate)."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that claims ``width x height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_exif_jpeg(size: tuple[int, int] = (80, 60), orientation: int = 6) -> bytes:
    """A JPEG whose EXIF block holds an ASCII tag where the standard says a number (``NewSubfileType``,
    a LONG, stored as 15 bytes of text), as cameras and editors write in the wild: Pillow reads the
    block, then fails to write it back (``struct.error``). The pixels and the orientation are fine."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "CameraMakerXYZ"  # Make, ASCII: its entry is patched below
    buf = io.BytesIO()
    Image.new("RGB", size, (100, 150, 200)).save(buf, "JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    tiff = data.find(b"Exif\x00\x00") + 6
    order = "<" if data[tiff : tiff + 2] == b"II" else ">"
    entry = data.find(struct.pack(order + "HH", 0x010F, 2), tiff + 8)
    data[entry : entry + 2] = struct.pack(order + "H", 0x00FE)  # the tag id only: type and size stay ASCII
    return bytes(data)


# -- routes -------------------------------------------------------------------------------------


@dataclass
class Route:
    """How the server answers one path."""

    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the headers (a timeout when longer than the client's)
    drip: float | None = None  # seconds between single bytes of the body (a slow drip)
    declared_length: int | None = None  # Content-Length to claim (a truncated body when larger)
    location: str | None = None  # a redirect target
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    fail_times: int = 0  # answer 503 to the first N requests (a flaky server)
    header_drip: float | None = None  # seconds between single bytes of the status line and headers


class FakeWeb:
    """The server. Register routes with :meth:`add`; ``base`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, latency: float = 0.0) -> None:
        self.routes: dict[str, Route] = {}
        self.robots: str | None = None  # None: robots.txt is a 404
        self.robots_status = 200
        self.bing: dict[str, list[tuple[str, str | None]]] = {}  # query -> [(image url, page url)]
        self.page_size = 20
        self.latency = latency
        self.hits: Counter[str] = Counter()
        self.concurrent = 0
        self.max_concurrent = 0
        self.user_agents: set[str] = set()
        self.authorizations: list[str] = []  # Authorization headers received (credentials in URLs)
        self._lock = threading.Lock()
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with web._lock:
                    web.concurrent += 1
                    web.max_concurrent = max(web.max_concurrent, web.concurrent)
                    web.hits[self.path] += 1
                    web.user_agents.add(self.headers.get("User-Agent", ""))
                    if self.headers.get("Authorization"):
                        web.authorizations.append(self.headers["Authorization"])
                # counted while the request is being worked on, not while its answer goes out: the client may
                # read the answer and send its next request before this thread runs again (under load), which
                # would count one request too many against a per-host cap
                try:
                    if web.latency:
                        time.sleep(web.latency)
                finally:
                    with web._lock:
                        web.concurrent -= 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    web._serve(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that give up (timeouts, caps) reset connections: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self) -> FakeWeb:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, route: Route | bytes) -> str:
        """Serve ``route`` (or image bytes) at ``path``; return its full URL."""
        self.routes[path] = route if isinstance(route, Route) else Route(body=route)
        return self.url(path)

    def add_results(self, query: str, paths: list[str]) -> None:
        """Make the fake Bing return these image paths (each with a source page) for ``query``."""
        self.bing[query] = [(self.url(p), self.url("/page" + p)) for p in paths]

    def fetches(self, path: str) -> int:
        return self.hits[path]

    # -- serving --------------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        if parts.path == "/robots.txt":
            if self.robots is None:
                return self._send(h, 404, b"not found", "text/plain")
            return self._send(h, self.robots_status, self.robots.encode(), "text/plain")
        if parts.path == "/images/async":
            return self._bing_page(h, parse_qs(parts.query))
        route = self.routes.get(h.path) or self.routes.get(parts.path)
        if route is None:
            return self._send(h, 404, b"<html>not found</html>", "text/html")
        if route.fail_times and self.hits[h.path] <= route.fail_times:
            return self._send(h, 503, b"busy", "text/plain", {"Retry-After": "0"})
        if route.delay:
            time.sleep(route.delay)
        if route.location is not None:
            return self._send(h, route.status if route.status in (301, 302, 303, 307, 308) else 302, b"", "text/plain",
                              {"Location": route.location})  # fmt: skip
        if route.header_drip is not None:
            head = (f"HTTP/1.1 {route.status} OK\r\nContent-Type: {route.content_type}\r\n"
                    f"Content-Length: {len(route.body)}\r\n\r\n").encode()
            for i in range(len(head)):
                h.wfile.write(head[i : i + 1])
                h.wfile.flush()
                time.sleep(route.header_drip)
            h.wfile.write(route.body)
            return None
        if route.drip is not None:
            h.send_response(route.status)
            h.send_header("Content-Type", route.content_type)
            h.send_header("Content-Length", str(len(route.body)))
            h.end_headers()
            for i in range(len(route.body)):
                h.wfile.write(route.body[i : i + 1])
                h.wfile.flush()
                time.sleep(route.drip)
            return None
        if not route.send_length or route.declared_length is not None:
            # no Content-Length at all, or one that disagrees with the body (truncation tests)
            h.send_response(route.status)
            h.send_header("Content-Type", route.content_type)
            if route.send_length and route.declared_length is not None:
                h.send_header("Content-Length", str(route.declared_length))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(route.body)
            h.wfile.flush()
            h.close_connection = True
            return None
        return self._send(h, route.status, route.body, route.content_type, route.headers)

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _bing_page(self, h: BaseHTTPRequestHandler, qs: dict[str, list[str]]) -> None:
        query = qs.get("q", [""])[0]
        first = int(qs.get("first", ["0"])[0])
        results = self.bing.get(query, [])[first : first + self.page_size]
        self._send(h, 200, bing_html(results).encode(), "text/html; charset=utf-8")


def bing_html(results: list[tuple[str, str | None]]) -> str:
    """A Bing ``/images/async`` result page holding ``results`` (image URL, source page)."""
    divs = []
    for i, (murl, purl) in enumerate(results):
        m = {"cid": f"c{i}", "purl": purl, "murl": murl, "turl": "https://tse.example/th?id=1", "t": f"result {i}"}
        divs.append(
            '<li><div class="iuscp"><div class="imgpt">'
            f'<a class="iusc" m="{html.escape(json.dumps(m, separators=(",", ":")))}" href="/images/search?view=detailV2">'
            '<img class="mimg" src="https://tse.example/th?id=1"/></a></div></div></li>'
        )
    return "<html><body><ul class='dgControl_list'>" + "".join(divs) + "</ul></body></html>"
