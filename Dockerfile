# soulsai image: the training node, the telemetry node and (for local tests) sampling clients.
#   docker build -t soulsai .                     CPU torch from PyTorch's CPU wheel index
#   docker build -t soulsai:gpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# An unpinned `pip install torch` from PyPI pulls a multi-GB CUDA build; torch is therefore
# installed first, pinned, from the index in TORCH_INDEX_URL, and the package install keeps it.
# The image runs the nodes (the `server` extra) and test clients on LunarLander (`box2d`).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# An unprivileged user; uid 1000 matches the first user of most hosts, so the bind-mounted
# saves/ stays writable (compose can run it as another uid: SOULSAI_UID / SOULSAI_GID).
RUN groupadd --gid 1000 soulsai \
    && useradd --uid 1000 --gid soulsai --home-dir /app --no-create-home --shell /usr/sbin/nologin soulsai

WORKDIR /app

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY config/config_d.yaml ./config/config_d.yaml
COPY config/presets ./config/presets
COPY soulsai ./soulsai
RUN pip install "./[server,box2d]" \
    && python -c "import torch, soulsai.cli; print('torch', torch.__version__)" \
    && mkdir -p /app/saves \
    && chown soulsai:soulsai /app/saves

USER 1000:1000
# The training node's Prometheus /metrics and the telemetry node's HTTP side (docs/deployment.md).
EXPOSE 8081 8080
ENTRYPOINT ["soulsai"]
CMD ["--help"]
