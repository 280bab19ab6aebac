# modelserve with the bundled example models: a demo image, and a template for your own.
#   docker build -t modelserve .
#   docker run --rm -p 8000:8000 modelserve
#   curl -d @examples/req.json localhost:8000/v2/models/credit/infer
# Your models: mount them and name them, e.g.
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" modelserve serve /models --host 0.0.0.0
# See docs/deploy.md (state volume, tokens, TLS, SIGTERM drain, Kubernetes).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the state folder and nothing else.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin modelserve \
    && mkdir -p /var/lib/modelserve \
    && chown modelserve:modelserve /var/lib/modelserve

WORKDIR /app
COPY pyproject.toml README.md ./
COPY modelserve ./modelserve
RUN pip install '.[fast]'
COPY examples ./examples

USER modelserve
VOLUME ["/var/lib/modelserve"]
EXPOSE 8000

# Ready means every model is loaded warm; 503 while loading, while draining, or with a model missing.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]

ENTRYPOINT ["modelserve"]
CMD ["serve", "examples/models", "--host", "0.0.0.0", "--port", "8000", "--state-dir", "/var/lib/modelserve"]
