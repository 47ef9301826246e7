# fleetmon: one image for the Python side of the stack (the demo simulator, the three exporters, the
# webhook receiver and the MLflow tracking server); docker-compose.yml runs each as its own service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEETMON_CONFIG=/app/config/fleetmon.yml

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or the pins change. Every
# dependency at the version pinned in constraints.txt, as `make` installs them (scripts/lock-deps.sh).
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir -p fleetmon collectors exporters simulator \
 && touch fleetmon/__init__.py collectors/__init__.py exporters/__init__.py simulator/__init__.py \
 && pip install -c constraints.txt . \
 && pip uninstall -y fleetmon

# The project itself.
COPY fleetmon ./fleetmon
COPY collectors ./collectors
COPY exporters ./exporters
COPY simulator ./simulator
RUN pip install --no-deps . && rm -rf build *.egg-info
# The default config (docker-compose.yml mounts the repository's config/ over it).
COPY config ./config

# Unprivileged; /app/var (outputs, logs, state, MLflow data) is a volume shared by the services.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin fleetmon \
 && mkdir -p /app/var/data/mlflow /app/var/data/webhook /app/var/demo /app/var/state /app/var/quarantine \
 && chown -R fleetmon /app/var
USER fleetmon
VOLUME ["/app/var"]
EXPOSE 5000 9701 9702 9703 9704

ENTRYPOINT ["fleetmon"]
CMD ["--help"]
