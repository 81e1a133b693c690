# Test scaffolding (scripts/compose-smoke/standins.sh): Debian's PostgreSQL as a stand-in for
# the official image where no image registry is reachable. What the compose file uses of it:
# POSTGRES_USER/POSTGRES_DB/POSTGRES_PASSWORD, data in /var/lib/postgresql/data, `pg_isready`.
ARG BASE
FROM ${BASE}
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin | head -n 1)" /usr/local/pgbin
ENV PATH=/usr/local/pgbin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
