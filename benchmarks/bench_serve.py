"""`cnnlab serve` under load, beside `bench`'s own end-to-end figure for the same model and backend, same run.

1. `bench` (library: ``cnnlab.bench_models``) measures its end-to-end images/s (decode + model, its
   evaluation pass) on a folder of 500x375 JPEGs cut from real photos, with the backend ``auto`` chooses.
2. `cnnlab serve MODEL` starts (the ONNX export cached by step 1): the time from start to ``/readyz``.
3. A load generator in a separate process (asyncio + httpx) runs CLIENTS concurrent clients, each sending
   single JPEGs one after the other for SECONDS: throughput, p50/p90/p99 latency, and the batch sizes
   ``/metrics`` counted (dynamic batching). Steps 3 and 1 alternate for ROUNDS rounds (the idle server takes
   no CPU meanwhile), so that a change of machine load hits both alike; the ratio is of their medians.
4. The same load again with HOSTILE bad requests mixed in (non-images, truncated JPEGs, decompression bomb
   headers, 20000x1 strips, wrong content types, bodies over the limit): every good request must be answered,
   and the server's memory (PSS of all its processes) is compared with its idle figure.
5. Slow clients: SLOW connections that never finish their headers and 256 uploads that send a byte now and
   then, held open while the good load runs again: every good request and /healthz must be answered.
6. A flood: FLOOD requests at once, one connection each (503 with Retry-After beyond --max-pending).

Usage (from the project root):
    .venv/bin/python benchmarks/bench_serve.py [--model efficientnet_lite0] [--clients 16] [--seconds 15] [--rounds 3]
        [--hostile 1000] [--images 64] [--flood 1000] [--slow 2100]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

SIZE = (500, 375)


# --- images ---------------------------------------------------------------------------------------------------

def real_photos() -> list:
    import numpy as np
    from PIL import Image
    from skimage import data as sk
    from sklearn.datasets import load_sample_image

    arrays = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.hubble_deep_field(), sk.stereo_motorcycle()[0],
              sk.retina(), np.stack([sk.camera()] * 3, axis=-1), load_sample_image("china.jpg"),
              load_sample_image("flower.jpg")]
    return [Image.fromarray(a).convert("RGB") for a in arrays]


def make_jpegs(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 500x375 JPEGs: crops of real photos at several scales and offsets, in two class folders."""
    from PIL import Image, ImageOps

    rng = random.Random(0)
    photos = real_photos()
    paths = []
    for i in range(count):
        img = photos[i % len(photos)]
        scale = max(SIZE[0] / img.width, SIZE[1] / img.height) * rng.uniform(1.0, 1.6)
        big = img.resize((max(SIZE[0], round(img.width * scale)), max(SIZE[1], round(img.height * scale))),
                         Image.Resampling.BILINEAR)
        x, y = rng.randint(0, big.width - SIZE[0]), rng.randint(0, big.height - SIZE[1])
        crop = big.crop((x, y, x + SIZE[0], y + SIZE[1]))
        if i % 2:
            crop = ImageOps.mirror(crop)
        path = folder / ("a" if i % 2 else "b") / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def hostile_bodies(good: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """(kind, headers, body) of the bad requests, in rotation."""
    from PIL import Image

    def png(size: tuple[int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, (90, 20, 160)).save(buffer, "PNG")
        return buffer.getvalue()

    bomb = bytearray(png((8, 8)))
    ihdr = bomb.index(b"IHDR")
    bomb[ihdr + 4:ihdr + 12] = struct.pack(">II", 40_000, 40_000)
    bomb[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(bomb[ihdr:ihdr + 17])) & 0xFFFFFFFF)
    big = bytearray(bomb)  # under the pixel limit alone; 32 of them are over a request's pixel budget
    big[ihdr + 4:ihdr + 12] = struct.pack(">II", 9000, 9000)
    big[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(big[ihdr:ihdr + 17])) & 0xFFFFFFFF)
    parts = b"".join(b"--b0\r\nContent-Disposition: form-data; name=files; filename=%d.png\r\n"
                     b"Content-Type: image/png\r\n\r\n%s\r\n" % (i, bytes(big)) for i in range(32))
    jpeg = {"content-type": "image/jpeg"}
    return [
        ("not-an-image", jpeg, os.urandom(4000)),
        ("truncated", jpeg, good[: len(good) // 3]),
        ("bomb", {"content-type": "image/png"}, bytes(bomb)),
        ("strip-20000x1", {"content-type": "image/png"}, png((20000, 1))),
        ("wrong-type", {"content-type": "text/plain"}, b"hello"),
        ("bad-json", {"content-type": "application/json"}, b'{"images": ["%%%"]}'),
        ("empty", jpeg, b""),
        ("too-large", {"content-type": "image/jpeg", "x-declared-length": str(10**10)}, b""),
        ("deep-json", {"content-type": "application/json"}, b"[" * 100_000),
        ("multipart-no-boundary", {"content-type": "multipart/form-data"}, os.urandom(2000)),
        ("too-many-pixels-32x9000x9000", {"content-type": "multipart/form-data; boundary=b0"}, parts + b"--b0--\r\n"),
    ]


# --- the load generator (its own process) -------------------------------------------------------------------

async def _oversized(url: str) -> int:
    """A request that declares a body over the limit and sends none: answered 413 before any body is read."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {10**10}\r\n\r\n"
                 .encode())
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


async def load(url: str, files: list[str], clients: int, seconds: float, hostile: int) -> dict:
    import httpx

    bodies = [Path(f).read_bytes() for f in files]
    bad = hostile_bodies(bodies[0])
    latencies: list[float] = []
    good_failed: dict[str, int] = {}
    bad_statuses: dict[str, dict[str, int]] = {}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def good_client(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/predict", content=body, headers={"content-type": "image/jpeg"})
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == "200":
                    latencies.append(time.perf_counter() - t0)
                else:
                    good_failed[status] = good_failed.get(status, 0) + 1

        async def bad_client(k: int, share: int) -> None:
            for j in range(share):
                kind, headers, body = bad[(k + j) % len(bad)]
                try:
                    if "x-declared-length" in headers:
                        status = str(await _oversized(url))
                    else:
                        r = await client.post(url + "/v1/predict", content=body, headers=headers)
                        status = str(r.status_code)
                except (httpx.HTTPError, OSError, ValueError, IndexError) as exc:
                    status = type(exc).__name__
                bad_statuses.setdefault(kind, {}).setdefault(status, 0)
                bad_statuses[kind][status] += 1
                await asyncio.sleep(seconds / max(1, share) * 0.5)  # spread over the run

        t0 = time.perf_counter()
        tasks = [good_client(k) for k in range(clients)]
        senders = 4
        if hostile:
            tasks += [bad_client(k, hostile // senders + (k < hostile % senders)) for k in range(senders)]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return {"ok": len(latencies), "elapsed_s": elapsed, "latencies_s": latencies, "good_failed": good_failed,
            "bad": bad_statuses}


async def flood(url: str, files: list[str], connections: int) -> dict:
    """``connections`` requests at once, each on its own connection: what comes back, and Retry-After on 503s."""
    import httpx

    body = Path(files[0]).read_bytes()
    statuses: dict[str, int] = {}
    retry_after_missing = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one() -> None:
            nonlocal retry_after_missing
            try:
                r = await client.post(url + "/v1/predict", content=body, headers={"content-type": "image/jpeg"})
                status = str(r.status_code)
                retry_after_missing += r.status_code == 503 and "retry-after" not in r.headers
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(connections)))
        elapsed = time.perf_counter() - t0
    return {"statuses": statuses, "retry_after_missing": retry_after_missing, "elapsed_s": elapsed}


def client_main(argv: list[str]) -> int:
    url, files_json, clients, seconds, hostile = argv
    files = json.loads(Path(files_json).read_text())
    if float(seconds) < 0:  # the flood: ``clients`` connections at once
        sys.stdout.write(json.dumps(asyncio.run(flood(url, files, int(clients)))))
        return 0
    result = asyncio.run(load(url, files, int(clients), float(seconds), int(hostile)))
    sys.stdout.write(json.dumps(result))
    return 0


def run_load(url: str, files: list[Path], clients: int, seconds: float, hostile: int, server_pid: int) -> tuple[dict, float]:
    """The load generator in a separate process; returns its figures and the server's peak RSS meanwhile."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([str(p) for p in files], f)
    process = subprocess.Popen([sys.executable, __file__, "--client", url, f.name, str(clients), str(seconds),
                                str(hostile)], stdout=subprocess.PIPE)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, tree_rss_mib(server_pid))
        time.sleep(0.2)
    out = process.stdout.read() if process.stdout else b""
    if process.returncode != 0:
        raise SystemExit(f"the load generator failed ({process.returncode})")
    return json.loads(out), peak


# --- the server ---------------------------------------------------------------------------------------------

def open_slow_clients(url: str, headers: int, bodies: int) -> list[socket.socket]:
    """Connections that stall: ``headers`` with half a request head, ``bodies`` with a body announced and one byte."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    held = []
    for k in range(headers + bodies):
        sock = socket.create_connection((parts.hostname, parts.port))
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" if k < headers else
                     b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\na")
        held.append(sock)
    return held


def tree_rss_mib(pid: int) -> float:
    """Memory of ``pid`` and all its descendants (proportional set size), in MiB (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for p in tree:  # PSS: a page shared by the forked processes counts once, split between them
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, args: list[str]) -> tuple[subprocess.Popen, str, float]:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", model, "--port", str(port), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


def batch_sizes(url: str) -> dict[str, float]:
    import httpx

    from cnnlab.serve.metrics import parse_histogram

    text = httpx.get(url + "/metrics").text
    cumulative = parse_histogram(text, "cnnlab_serve_batch_images")
    sums = [line for line in text.splitlines() if line.startswith("cnnlab_serve_batch_images_sum")]
    total = cumulative.get("+Inf", 0)
    mean = float(sums[0].split()[-1]) / total if sums and total else 0.0
    buckets, previous = {}, 0.0
    for le, count in cumulative.items():
        if count - previous:
            buckets[le] = count - previous
        previous = count
    return {"batches": total, "mean_images": mean, **{f"<={k}": v for k, v in buckets.items()}}


def bench_e2e(folder: Path, model: str) -> tuple[float, str]:
    """`bench`'s end-to-end images/s (decode + model over the folder) with the backend auto picks for serve."""
    from cnnlab.bench.config import BenchConfig
    from cnnlab.bench.job import run
    from cnnlab.options import ModelSource, RuntimeOptions
    from cnnlab.runtime.loader import choose_backend

    chosen, _ = choose_backend(ModelSource(name=model), RuntimeOptions())
    result = run(BenchConfig(data=folder, models=[model], backends=[chosen]), out=None, plots=False)
    (row,) = [m.flat() for m in result.models if m.ok]
    return float(row["eval_images_per_s"]), chosen.value


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        return client_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of serve load then bench, alternately")
    ap.add_argument("--hostile", type=int, default=1000)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--flood", type=int, default=1000, help="requests sent at once, one connection each")
    ap.add_argument("--slow", type=int, default=2100, help="connections that never finish their headers")
    ap.add_argument("--max-batch-size", default="16")
    ap.add_argument("--batch-timeout-ms", default="10")
    a = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    files = make_jpegs(folder / "photos", a.images)
    load_avg = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load_avg[0]:.1f} {load_avg[1]:.1f} {load_avg[2]:.1f}; "
          f"{len(files)} JPEGs of {SIZE[0]}x{SIZE[1]} cut from real photos", flush=True)
    first, backend = bench_e2e(folder / "photos", a.model)  # also makes and caches the ONNX export
    print(f"bench end-to-end ({a.model}, {backend}), first run: {first:.1f} images/s", flush=True)
    process, url, ready_s = start_server(a.model, ["--max-batch-size", a.max_batch_size,
                                                   "--batch-timeout-ms", a.batch_timeout_ms])
    try:
        model = __import__("httpx").get(url + "/v1/model").json()
        print(f"serve: ready {ready_s:.2f} s after start (export cached); backend {model['runtime']['backend']}, "
              f"max batch {a.max_batch_size}, batch timeout {a.batch_timeout_ms} ms", flush=True)
        run_load(url, files, a.clients, 3.0, 0, process.pid)  # warm-up, not reported
        idle = tree_rss_mib(process.pid)
        # rounds of serve then bench (the idle server takes no CPU meanwhile): load drift hits both alike
        serve_rates, bench_rates, latencies, peak_clean = [], [], [], 0.0
        for r in range(a.rounds):
            clean, peak = run_load(url, files, a.clients, a.seconds, 0, process.pid)
            peak_clean = max(peak_clean, peak)
            serve_rates.append(clean["ok"] / clean["elapsed_s"])
            latencies += clean["latencies_s"]
            bench_rates.append(bench_e2e(folder / "photos", a.model)[0])
            print(f"round {r + 1}: serve {serve_rates[-1]:.1f} images/s ({clean['ok']} answered, failed "
                  f"{clean['good_failed'] or 'none'}), bench {bench_rates[-1]:.1f} images/s, ratio "
                  f"{serve_rates[-1] / bench_rates[-1]:.2f}; load average {os.getloadavg()[0]:.1f}", flush=True)
        rate, reference = statistics.median(serve_rates), statistics.median(bench_rates)
        lat = latencies
        print(f"serve, {a.clients} clients, single JPEGs: median {rate:.1f} images/s; latency p50 "
              f"{percentile(lat, 50) * 1e3:.0f} ms, p90 {percentile(lat, 90) * 1e3:.0f} ms, p99 "
              f"{percentile(lat, 99) * 1e3:.0f} ms ({len(lat)} requests)", flush=True)
        print(f"bench end-to-end, same rounds: median {reference:.1f} images/s; serve/bench ratio "
              f"{rate / reference:.2f} (goal >= 0.80)", flush=True)
        print(f"batches seen in /metrics (since start): {batch_sizes(url)}", flush=True)
        mixed, peak_mixed = run_load(url, files, a.clients, a.seconds, a.hostile, process.pid)
        after = tree_rss_mib(process.pid)
        bad_total = sum(sum(v.values()) for v in mixed["bad"].values())
        lat = mixed["latencies_s"]
        print(f"with {bad_total} hostile requests mixed in: {mixed['ok']} good requests answered "
              f"({mixed['ok'] / mixed['elapsed_s']:.1f} images/s, p99 {percentile(lat, 99) * 1e3:.0f} ms), good "
              f"requests failed: {mixed['good_failed'] or 'none'}", flush=True)
        print(f"hostile answers by kind: {json.dumps(mixed['bad'], sort_keys=True)}", flush=True)
        print(f"server memory (PSS of all its processes): idle {idle:.0f} MiB, peak under load {peak_clean:.0f} MiB, "
              f"peak with hostile mix {peak_mixed:.0f} MiB, after {after:.0f} MiB; peak/idle {peak_mixed / idle:.2f}x",
              flush=True)
        held = open_slow_clients(url, a.slow, 256)
        try:
            slowed, peak_slow = run_load(url, files, a.clients, a.seconds, 0, process.pid)
            health = __import__("httpx").get(url + "/healthz", timeout=30).status_code
        finally:
            for sock in held:
                sock.close()
        print(f"with {a.slow} connections stalled in their headers and 256 slow uploads held open: {slowed['ok']} good "
              f"requests answered ({slowed['ok'] / slowed['elapsed_s']:.1f} images/s), failed "
              f"{slowed['good_failed'] or 'none'}; /healthz {health}; peak memory {peak_slow:.0f} MiB "
              f"({peak_slow / idle:.2f}x idle)", flush=True)
        flooded, peak_flood = run_load(url, files, a.flood, -1, 0, process.pid)
        print(f"{a.flood} requests at once, one connection each: {json.dumps(flooded['statuses'], sort_keys=True)} in "
              f"{flooded['elapsed_s']:.1f} s, 503s without Retry-After: {flooded['retry_after_missing']}; peak memory "
              f"{peak_flood:.0f} MiB ({peak_flood / idle:.2f}x idle)", flush=True)
        last = __import__("httpx").post(url + "/v1/predict", content=files[0].read_bytes(),
                                        headers={"content-type": "image/jpeg"}, timeout=60)
        print(f"the next good request after all that: {last.status_code}", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    print(f"server exit code after SIGTERM {code}; load average now {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
