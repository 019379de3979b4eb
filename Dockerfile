# mqttd container image. Build: docker build -t mqttd .   Run: docs/OPERATIONS.md "Container".
#
# Two stages: the first compiles the Cython fast paths into wheels (gcc), the second holds
# only Python, the wheels and the configuration, and runs as an unprivileged user.

FROM python:3.12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# mqttd and every dependency as wheels, so the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 1883 --user-group --home-dir /var/lib/mqttd \
        --shell /usr/sbin/nologin mqttd \
 && install -d -o mqttd -g mqttd -m 0700 /var/lib/mqttd \
 && install -d -m 0755 /etc/mqttd
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels mqttd \
 && rm -rf /tmp/wheels
# Binds 0.0.0.0 with the built-in user table as authentication (see the file).
COPY contrib/docker/mqttd.toml /etc/mqttd/mqttd.toml

USER mqttd
# The store (sessions, queued and retained messages, users), the control socket, banned.json.
VOLUME ["/var/lib/mqttd"]
EXPOSE 1883
ENV MQTTD_DATA_DIR=/var/lib/mqttd PYTHONUNBUFFERED=1
# Healthy while the broker answers on its control socket.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["mqttd", "ctl", "--data-dir", "/var/lib/mqttd", "--timeout", "5", "status"]
# SIGTERM: MQTT 5 clients get DISCONNECT 0x8B, the store is flushed; give it time to.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mqttd", "start", "--config", "/etc/mqttd/mqttd.toml", "--data-dir", "/var/lib/mqttd"]
