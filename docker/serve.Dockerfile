# `cnnlab serve` in a container: the same pinned versions as the tests (constraints.txt), CPU-only torch,
# the model's ONNX export made at build time (the container is ready in seconds), a non-root user.
#
#   docker build -f docker/serve.Dockerfile -t cnnlab-serve .
#   docker run --rm -p 8000:8000 cnnlab-serve                          # the offline model
#   docker run --rm -p 8000:8000 -v "$PWD/runs:/models:ro" cnnlab-serve /models/mine/best.pt
#
# MODEL (the argument) is anything `cnnlab serve` takes: a registry name, a checkpoint or an .onnx file.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    CNNLAB_CACHE_DIR=/opt/cnnlab-cache \
    TORCH_HOME=/opt/torch-home

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# CPU wheels of torch (no CUDA libraries: a much smaller image); every other version from constraints.txt
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -c constraints.txt ".[serve,offline-model]" \
 && useradd --create-home --uid 10001 cnnlab \
 && python -c "from cnnlab.options import ModelSource, RuntimeOptions; \
from cnnlab.runtime.loader import choose_backend; \
print(choose_backend(ModelSource(name='efficientnet_lite0'), RuntimeOptions()))" \
 && chown -R cnnlab /opt/cnnlab-cache

USER cnnlab
WORKDIR /home/cnnlab
EXPOSE 8000
# stateless: nothing is written but the export cache of a model not baked in (run N replicas behind a balancer)
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
# SIGTERM (docker stop) lets requests in flight finish before the server exits
STOPSIGNAL SIGTERM
ENTRYPOINT ["cnnlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["efficientnet_lite0"]
