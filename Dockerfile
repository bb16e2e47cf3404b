# syntax=docker/dockerfile:1
# The production image: one image for every role (web, worker, beat, init); the command picks it.
# See docs/deploy.md. Build with `docker-compose build` or `docker build -t newsletter .`.

ARG PYTHON_VERSION=3.11.12

# The product as a wheel: the package with its templates, static files, migrations and the
# emails/ folder (layouts, system mails, the shipped article) inside it as newsletter.emails.
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --disable-pip-version-check --quiet --upgrade pip \
 && pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    INSTANCE_DIR=/app/instance

# A fixed numeric id so that orchestrators can check "runs as non-root" without a passwd lookup.
# Its home is writable (gunicorn keeps its control socket in ~/.gunicorn); /app is not.
RUN groupadd --system --gid 10001 newsletter \
 && useradd --system --uid 10001 --gid newsletter --create-home --home-dir /home/newsletter \
        --shell /usr/sbin/nologin newsletter

WORKDIR /app

# Dependencies first, from the lock file alone (every package pinned, with its hashes), so
# that a code change does not reinstall them.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# The product: a plain install of the wheel (nothing of the source tree but the two entry
# points), so the image runs exactly what `pip install .` gives. The code stays owned by root
# and read-only for the service user.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && python -c "from newsletter.mail.compose import EMAILS_DIR; assert (EMAILS_DIR / 'layouts' / 'step.html').is_file(), EMAILS_DIR; print('emails:', EMAILS_DIR)"
COPY web.py worker.py ./
RUN python -m compileall -q web.py worker.py \
 && mkdir -p "$INSTANCE_DIR" \
 && chown newsletter:newsletter "$INSTANCE_DIR"

USER 10001:10001

EXPOSE 8000

# No curl in the slim image: the probe is a few lines of the Python that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# 0.0.0.0 is inside the container; docker-compose.yml publishes it on the host's 127.0.0.1 only.
# Workers: WEB_CONCURRENCY (gunicorn reads it); more options: GUNICORN_CMD_ARGS.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-", "web:app"]
