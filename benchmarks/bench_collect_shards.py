"""`cnnlab collect --urls` into WebDataset shards against loose files: throughput ratio, and resume after kill -9.

A local HTTP server (a separate process, so it does not share the client's GIL) serves N generated JPEGs
in C classes. The script runs the real command (`python -m cnnlab collect --urls LIST --format ...`, every
image fetched, verified, deduplicated and stored) into a fresh folder per run, alternating the formats
(files, webdataset, webdataset, files, ...) so that drift in a shared machine's speed falls on both, and
reports images/s from the run's own ``elapsed_s`` (interpreter start-up left out) and the ratio
webdataset / files, of the medians and of the best runs (on a shared machine the best run is the one
least slowed by its neighbours). Politeness is off for the local host (``--host-delay 0``), as for any host you own.

Then the resume check: a webdataset collect is killed with SIGKILL while a shard is being written, run
again, and the shards are read back with the ``webdataset`` library: every URL once, no bytes twice, and no
image kept before the kill fetched again (the server counts requests per path).

    python benchmarks/bench_collect_shards.py --images 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collect import jpeg


def _serve(n: int, size: tuple[int, int], latency: float, ready: mp.Queue) -> None:  # type: ignore[type-arg]
    images = {f"/img/{i}.jpg": jpeg(i, size) for i in range(n)}
    hits: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/_hits":  # the request counts, for the resume check
                with lock:
                    body, ctype, status = json.dumps(hits).encode(), "application/json", 200
            elif self.path == "/robots.txt":
                body, ctype, status = b"User-agent: *\nAllow: /\n", "text/plain", 200
            else:
                with lock:
                    hits[self.path] += 1
                if latency:
                    time.sleep(latency)
                found = images.get(self.path)
                body, ctype, status = (found, "image/jpeg", 200) if found else (b"not found", "text/plain", 404)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass

    server = Server(("127.0.0.1", 0), Handler)
    ready.put(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


def _hits(base: str) -> Counter[str]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/_hits", timeout=30) as response:
        return Counter(json.loads(response.read()))


def _command(urls: Path, out: Path, fmt: str, shard_size: int, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "cnnlab", "collect", "--urls", str(urls), "--out", str(out), "--format", fmt,
        "--shard-size", str(shard_size), "--threads", str(threads), "--per-host", str(threads), "--host-delay", "0",
        "--timeout", "10", "--retries", "0", "--min-size", "32", "--allow-private-hosts", "--quiet", "--json",
    ]  # fmt: skip


def _collect(urls: Path, out: Path, fmt: str, shard_size: int, threads: int) -> dict:
    done = subprocess.run(_command(urls, out, fmt, shard_size, threads), capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"collect --format {fmt} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _ok_urls(manifest: Path) -> set[str]:
    last: dict[str, dict] = {}
    if manifest.exists():
        for line in manifest.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):
                rec = json.loads(line)
                last[rec["url"]] = rec
    return {u for u, r in last.items() if r["status"] == "ok"}


def _resume_check(base: str, urls: Path, work: Path, n: int, shard_size: int, threads: int) -> bool:
    import webdataset as wds

    out = work / "killed"
    journal = out / ".journal"
    proc = subprocess.Popen(_command(urls, out, "webdataset", shard_size, threads), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        kept = _ok_urls(out / "manifest.jsonl")
        if len(kept) >= n // 3 and any(p.stat().st_size for p in journal.glob("*.tar")):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        print("resume check: the run ended before it could be killed", file=sys.stderr)
        return False
    proc.kill()
    proc.wait()
    before = _ok_urls(out / "manifest.jsonl")
    complete = len(list((out / "shards").glob("*.tar")))
    in_journal = 0
    for path in journal.glob("*.tar"):  # the unfinished shard; a kill may have cut its last member short
        with contextlib.suppress(tarfile.TarError, OSError, EOFError), tarfile.open(path, mode="r|") as tar:
            in_journal += sum(1 for info in tar if info.name.endswith(".jpg"))
    hits_before = _hits(base)
    result = _collect(urls, out, "webdataset", shard_size, threads)
    hits_after = _hits(base)
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    sample_urls = [json.loads(s["json"])["url"] for s in samples]
    digests = [hashlib.sha256(s["jpg"]).hexdigest() for s in samples]
    refetched = sum(1 for u in before if hits_after[u.removeprefix(base)] != hits_before[u.removeprefix(base)])
    ok = sum(c["ok"] for c in result["classes"])
    print(f"kill -9 after {len(before)} images kept ({complete} shards complete, {in_journal} images in the journal); "
          f"resumed: {ok} images, {len(samples)} in {len(shards)} shards, {len(set(sample_urls))} distinct URLs, "
          f"{len(set(digests))} distinct images, {refetched} kept images fetched again, "
          f"{n - len(set(sample_urls))} lost")
    return len(samples) == len(set(sample_urls)) == len(set(digests)) == n and refetched == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="URLs served and collected per run")
    parser.add_argument("--classes", type=int, default=10, help="classes the URLs are spread over")
    parser.add_argument("--size", default="320x240", help="image size WxH")
    parser.add_argument("--threads", type=int, default=8, help="downloads in flight (and per host)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    parser.add_argument("--latency", type=float, default=0.0, help="server delay per image response in s")
    parser.add_argument("--repeats", type=int, default=3, help="runs per format (the median is reported)")
    parser.add_argument("--no-resume-check", action="store_true", help="skip the kill -9 check")
    args = parser.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))

    ready: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    server = mp.Process(target=_serve, args=(args.images, (w, h), args.latency, ready), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{ready.get(timeout=300)}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-collect-shards-") as tmp:
            work = Path(tmp)
            urls = work / "urls.csv"
            urls.write_text("url,label\n" + "".join(f"{base}/img/{i}.jpg,class{i % args.classes:02d}\n"
                                                    for i in range(args.images)), encoding="utf-8")
            print(f"cnnlab collect --urls: {args.images} JPEGs of {w}x{h} in {args.classes} classes from 127.0.0.1 "
                  f"(separate process, latency {args.latency * 1000:.0f} ms), {args.threads} threads, "
                  f"shards of {args.shard_size}; {os.cpu_count()} CPUs")
            rates: dict[str, list[float]] = {"files": [], "webdataset": []}
            order = [fmt for i in range(args.repeats) for fmt in (("files", "webdataset") if i % 2 == 0
                                                                   else ("webdataset", "files"))]
            for run, fmt in enumerate(order):
                out = work / f"run{run}-{fmt}"
                result = _collect(urls, out, fmt, args.shard_size, args.threads)
                kept = sum(c["ok"] for c in result["classes"])
                rate = kept / result["elapsed_s"]
                rates[fmt].append(rate)
                print(f"  run {run + 1}: {fmt:<10} {kept} images in {result['elapsed_s']:.1f} s = {rate:.1f} images/s"
                      + (f", {len(result['shards'])} shards" if result["shards"] else ""))
                if kept != args.images:
                    print(f"only {kept} of {args.images} images kept", file=sys.stderr)
                    return 1
                subprocess.run(["rm", "-rf", str(out)], check=True)
            files, shards = statistics.median(rates["files"]), statistics.median(rates["webdataset"])
            print(f"median images/s: files {files:.1f}, webdataset {shards:.1f}; ratio webdataset/files "
                  f"{shards / files:.3f}")
            files, shards = max(rates["files"]), max(rates["webdataset"])  # the run least slowed by neighbours
            print(f"best images/s:   files {files:.1f}, webdataset {shards:.1f}; ratio webdataset/files "
                  f"{shards / files:.3f}")
            if not args.no_resume_check and not _resume_check(base, urls, work, args.images, args.shard_size,
                                                              args.threads):
                print("resume check FAILED", file=sys.stderr)
                return 1
    finally:
        server.terminate()
        server.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
