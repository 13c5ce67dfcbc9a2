# batchbridge serve: the HTTP receiver with its durable outbox.
#   docker build -t batchbridge .
#   docker run -p 8080:8080 -v bb-outbox:/var/lib/batchbridge \
#     -v "$PWD/bridge.toml:/etc/batchbridge/bridge.toml:ro" batchbridge
# Not built in this project's CI (no Docker engine there); its install step, deploy/install.sh, is
# what tests/test_deploy.py runs. docs/deployment.md has the rest.
# the build stage has the C compiler that compiles the normalising path (setup.py: mypyc); the image
# it runs in does not need one -- the venv is copied across (the same Python at the same path)
FROM python:3.12 AS build
COPY pyproject.toml setup.py README.md /src/
COPY core /src/core
COPY adapters /src/adapters
COPY contrib /src/contrib
COPY deploy/install.sh /src/deploy/install.sh
RUN sh /src/deploy/install.sh /opt/batchbridge /src all

FROM python:3.12-slim

# an unprivileged account with a fixed uid, so a volume's ownership and Kubernetes'
# runAsUser/fsGroup can name it
RUN groupadd --system --gid 10001 batchbridge \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/batchbridge --shell /usr/sbin/nologin batchbridge \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/batchbridge \
 && install -d -m 0755 /etc/batchbridge

COPY --from=build /opt/batchbridge /opt/batchbridge

# the SQLite outbox (one node): what was acknowledged and not yet delivered lives here, so it must
# outlive the container
VOLUME ["/var/lib/batchbridge"]
WORKDIR /var/lib/batchbridge
USER 10001:10001
EXPOSE 8080
ENV PATH=/opt/batchbridge/bin:$PATH PYTHONUNBUFFERED=1
# serve stops cleanly on SIGTERM (the publishers finish their batch in flight)
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchbridge", "serve"]
CMD ["--config", "/etc/batchbridge/bridge.toml", "--host", "0.0.0.0", "--port", "8080", \
     "--outbox", "/var/lib/batchbridge/outbox.db"]
