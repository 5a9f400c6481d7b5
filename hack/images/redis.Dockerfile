# syntax=docker/dockerfile:1
# A stand-in for the official redis image (the chart's redis.internal.image, default
# redis:7.4) on machines that reach the Debian mirror but no container registry:
# Debian's redis-server 7.0 behind an entrypoint that does what the official one does.
# What the chart relies on (templates/redis.yaml): `redis-server` as the first arg, the
# official image's redis user (uid/gid 999: the chart sets runAsUser 999 and fsGroup 999),
# a /data working directory, port 6379, and nothing written outside /data (read-only root
# filesystem). Built by hack/build-images.sh with --build-arg BASE_IMAGE=<local base>.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The redis user first, so the package's postinst (adduser --system redis) keeps uid 999.
# policy-rc.d keeps the package from starting a server during the build.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid 999 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin redis \
    && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod 755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir /data \
    && chown redis:redis /data \
    && test "$(id -u redis):$(id -g redis)" = "999:999"
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
