# The bot's container image. Build: docker build -t synatra-bot .
# The default PyTorch is the CPU build (a bot beside vLLM or llama.cpp needs no GPU); for the
# embedded engine on an NVIDIA GPU take PyPI's CUDA build instead:
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t synatra-bot .
# Run: docker run --env-file .env -v synatra-data:/data -v synatra-models:/models synatra-bot
# (add --gpus all for the embedded engine). See docs/hosting.md.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# HF_HOME: the model hub's downloads go to the models volume, kept across restarts and
# rebuilds. DATABASE_URL: SQLite in the data volume by default (compose.yaml points it at
# PostgreSQL). METRICS_ADDR: /healthz and /metrics inside the container's network (publish the
# port to reach them from the host).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models \
    DATABASE_URL=sqlite+aiosqlite:////data/synatra.db \
    METRICS_ADDR=0.0.0.0:9108

RUN useradd --system --create-home --uid 10001 --user-group synatra \
    && mkdir -p /data /models \
    && chown synatra:synatra /data /models

WORKDIR /app
# PyTorch first, from the index that decides its build; the rest from PyPI (torch is then
# already satisfied).
RUN pip install --index-url "$TORCH_INDEX_URL" torch
COPY pyproject.toml README.md ./
COPY synatra_bot ./synatra_bot
COPY migrations ./migrations
COPY deploy/entrypoint.sh deploy/healthcheck.py /usr/local/share/synatra-bot/
# Installed in place: the package and its migrations stay side by side in /app.
RUN pip install -e ".[postgres]"

USER synatra
VOLUME ["/data", "/models"]
EXPOSE 9108
# Loading the model takes minutes (downloading it the first time, longer): failures during
# the start period do not count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python", "/usr/local/share/synatra-bot/healthcheck.py"]
ENTRYPOINT ["/usr/local/share/synatra-bot/entrypoint.sh"]
