# Test scaffolding (scripts/compose-smoke/standins.sh): Debian's Redis as a stand-in for the
# official image where no image registry is reachable. What the compose file uses of it:
# `redis-server ARGS` as the command, `redis-cli` for the healthcheck, /data as the working dir.
ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
# As the official image does: no protected mode (the port is reachable only on the compose
# network), unless the command sets it.
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then shift; exec redis-server --protected-mode no \"$@\"; fi; exec \"$@\"", "--"]
CMD ["redis-server"]
EXPOSE 6379
