"""The Prometheus text of /metrics: counters, histograms, a batch counted once whoever reports it."""

from __future__ import annotations

from cnnlab.serve.metrics import ServeMetrics, parse_histogram


def test_a_batch_shared_by_requests_is_counted_once() -> None:
    metrics = ServeMetrics()
    for _ in range(3):  # three requests of one batch each report it
        metrics.batch("7-1", images=3, requests=3, model_ms=12.0)
    metrics.batch("7-2", images=1, requests=1, model_ms=4.0)
    metrics.batch("7-3", images=0, requests=1, model_ms=0.0)  # every image failed: the model did not run
    text = metrics.render()
    assert parse_histogram(text, "cnnlab_serve_batch_images") == {
        "1": 1, "2": 1, "4": 2, "8": 2, "16": 2, "32": 2, "64": 2, "128": 2, "256": 2, "+Inf": 2}
    assert "cnnlab_serve_batch_images_sum 4" in text


def test_requests_errors_and_latency_are_exposed() -> None:
    metrics = ServeMetrics()
    metrics.request("/v1/predict", "POST", 200, 0.02)
    metrics.request("/v1/predict", "POST", 415, 0.001)
    metrics.error('not-an-"image"')
    metrics.predicted(2)
    text = metrics.render()
    assert 'cnnlab_serve_requests_total{path="/v1/predict",method="POST",status="415"} 1' in text
    assert 'cnnlab_serve_errors_total{reason="not-an-\\"image\\""} 1' in text
    assert "cnnlab_serve_images_total 2" in text
    latency = parse_histogram(text, "cnnlab_serve_request_duration_seconds")
    assert latency["0.005"] == 1 and latency["0.025"] == 2 and latency["+Inf"] == 2
    assert "# TYPE cnnlab_serve_request_duration_seconds histogram" in text
