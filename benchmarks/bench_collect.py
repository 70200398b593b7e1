"""Downloader throughput against a local HTTP server: images/s at 1, 4 and 8 threads.

The server (a separate process, so it does not share the client's GIL) serves N generated JPEGs
over HTTP/1.1 keep-alive, optionally waiting ``--latency`` seconds before each response to stand in
for a real network round trip. For each latency and thread count the script fetches every image
once through :class:`cnnlab.collect.Downloader` (robots.txt checked, byte cap, per-host limit set
to the thread count, no host delay) and, with ``--verify``, also decodes and hashes each one as
``collect`` does.

    python benchmarks/bench_collect.py --images 200 --threads 1,4,8 --latency 0,0.05 --verify
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A distinct JPEG per seed (smooth noise scaled up), as a crawl would fetch; shared with bench_collect_shards."""
    from PIL import Image

    rng = random.Random(seed)
    small = Image.new("RGB", (16, 12))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(16 * 12)])
    img = small.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _serve(n: int, size: tuple[int, int], latency: float, ready: mp.Queue) -> None:  # type: ignore[type-arg]
    images = {f"/img/{i}.jpg": jpeg(i, size) for i in range(n)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if latency:
                time.sleep(latency)
            body = images.get(self.path)
            if self.path == "/robots.txt":
                body, ctype, status = b"User-agent: *\nAllow: /\n", "text/plain", 200
            elif body is None:
                body, ctype, status = b"not found", "text/plain", 404
            else:
                ctype, status = "image/jpeg", 200
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # clients closing keep-alive connections at the end of a run

    server = Server(("127.0.0.1", 0), Handler)
    ready.put((server.server_address[1], sum(len(b) for b in images.values())))
    server.serve_forever(poll_interval=0.05)


def _run(base: str, n: int, threads: int, verify: bool) -> tuple[float, int]:
    from cnnlab.collect import Downloader, FetchConfig
    from cnnlab.collect.verify import verify_image

    config = FetchConfig(timeout=10, retries=0, per_host=threads, host_delay=0.0, allow_private_hosts=True)
    urls = [f"{base}/img/{i}.jpg" for i in range(n)]

    def one(url: str) -> bool:
        result = dl.fetch(url)
        if result.ok and verify and result.data is not None:
            verify_image(result.data)
        return result.ok

    with Downloader(config) as dl:
        dl.fetch(f"{base}/robots.txt")  # warm: robots.txt cached, one connection open
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            ok = sum(pool.map(one, urls))
        elapsed = time.perf_counter() - started
    return elapsed, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images served (and fetched per run)")
    parser.add_argument("--size", default="640x480", help="image size WxH")
    parser.add_argument("--threads", default="1,4,8", help="thread counts, comma-separated")
    parser.add_argument("--latency", default="0,0.05", help="server delay per response in s, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (the median is reported)")
    parser.add_argument("--verify", action="store_true", help="also decode, sha256 and phash each image")
    args = parser.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))
    thread_counts = [int(t) for t in args.threads.split(",")]
    latencies = [float(x) for x in args.latency.split(",")]

    print(f"cnnlab.collect Downloader, {args.images} JPEGs of {w}x{h}, server on 127.0.0.1 (separate process)")
    print(f"{'latency':>8} {'threads':>7} {'images/s':>9} {'MB/s':>7} {'vs 1 thread':>11}  {'mode'}")
    for latency in latencies:
        ready: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        server = mp.Process(target=_serve, args=(args.images, (w, h), latency, ready), daemon=True)
        server.start()
        port, total_bytes = ready.get(timeout=60)
        base = f"http://127.0.0.1:{port}"
        try:
            baseline = None
            for threads in thread_counts:
                runs = []
                for _ in range(args.repeats):
                    elapsed, ok = _run(base, args.images, threads, args.verify)
                    if ok != args.images:
                        print(f"only {ok} of {args.images} images fetched", file=sys.stderr)
                        return 1
                    runs.append(elapsed)
                elapsed = statistics.median(runs)
                rate = args.images / elapsed
                baseline = baseline or rate
                mode = "fetch+verify" if args.verify else "fetch"
                print(f"{latency * 1000:>6.0f}ms {threads:>7} {rate:>9.1f} {total_bytes / elapsed / 1e6:>7.1f} "
                      f"{rate / baseline:>10.2f}x  {mode}")
        finally:
            server.terminate()
            server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
