# Moorage container image: `docker build -t moorage .` then
#   docker run -p 5000:5000 -v moorage-data:/var/lib/moorage moorage
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry ./registry
COPY storage_backends ./storage_backends
RUN python -m venv /opt/moorage \
    && /opt/moorage/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/moorage/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 moorage \
    && useradd --system --uid 10001 --gid moorage --home-dir /var/lib/moorage --shell /usr/sbin/nologin moorage \
    && mkdir -p /var/lib/moorage /etc/moorage \
    && chown moorage:moorage /var/lib/moorage
COPY --from=build /opt/moorage /opt/moorage
COPY config/moorage.example.yml /etc/moorage/moorage.example.yml
ENV PATH=/opt/moorage/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MOORAGE_HTTP__HOST=0.0.0.0 \
    MOORAGE_HTTP__PORT=5000 \
    MOORAGE_STORAGE__FILESYSTEM__ROOT=/var/lib/moorage
USER moorage
WORKDIR /var/lib/moorage
VOLUME ["/var/lib/moorage"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MOORAGE_HTTP__PORT', '5000'), timeout=2)"]
ENTRYPOINT ["moorage"]
CMD ["serve", "--workers", "2"]
