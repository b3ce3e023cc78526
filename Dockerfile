# cachemesh: one per build host, with the Docker socket mounted and the host network.
#
#   docker build -t cachemesh .
#   docker run -d --name cachemesh --restart unless-stopped --network host \
#     -v /var/run/docker.sock:/var/run/docker.sock -v cachemesh:/var/lib/cachemesh \
#     -e CACHEMESH_SECRET=... -e CACHEMESH_SEEDS=build-1.internal:7611 cachemesh
#
# Configured by CACHEMESH_* env vars alone (see README). The base is any image with Python >= 3.11.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/cachemesh/bin:$PATH \
    CACHEMESH_DATA_DIR=/var/lib/cachemesh

COPY pyproject.toml README.md /src/
COPY mesh /src/mesh
# A virtualenv, so the image works on bases whose system Python refuses pip (PEP 668).
RUN python3 -m venv /opt/cachemesh \
 && /opt/cachemesh/bin/pip install --no-cache-dir /src \
 && rm -rf /src

VOLUME /var/lib/cachemesh
EXPOSE 7611/tcp 7611/udp
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["cachemesh", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cachemesh", "run"]
