# The service's image: PyTorch for CUDA, this package and Ray (the `cluster` extra). One image
# serves every role of docker-compose.yml: `stream serve` on one node, a Ray head, a GPU worker,
# a cluster front. Docker does not run on this project's machines: tests/deploy/ checks what
# this file names (files, extras, commands, flags, port, health path); docs/scaling.md says how
# to build and run it.
# the Python that constraints.txt was resolved and tested on
FROM python:3.11-slim-bookworm

# the CUDA build of torch (its wheels bring the CUDA libraries; the NVIDIA container toolkit
# brings the driver); TORCH_INDEX=https://download.pytorch.org/whl/cpu builds a CPU image
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAM_HOST=0.0.0.0 \
    STREAM_PORT=8000 \
    STREAM_RECORD_DIR=/recordings

RUN python -m pip install "$TORCH" --index-url "$TORCH_INDEX"

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY stream ./stream
COPY models ./models
COPY kernels ./kernels
COPY clients ./clients
COPY cli ./cli
COPY evals ./evals
RUN python -m pip install -c constraints.txt ".[cluster]" \
    && useradd --create-home --uid 1000 stream \
    && mkdir -p /checkpoints /recordings \
    && chown stream /recordings

USER stream
EXPOSE 8000
# checkpoints: local model folders (nothing is downloaded at run time); recordings: the MP4s
VOLUME ["/checkpoints", "/recordings"]
# models load before the port opens: full size takes a minute or two
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
# beyond loopback the server needs a token: STREAM_TOKEN (it refuses to start without one)
CMD ["stream", "serve"]
