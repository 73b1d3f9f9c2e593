# The tokenquota image of docker-compose.yml: every command but `tokenquota dev` (whose
# embedded servers are an extra the image leaves out): init, worker, api, the operator CLI.
# Python 3.11, the version the test suite runs on. (Not buildable in environments without
# Docker; tests/test_dockerfile.py checks what it copies and installs.)
FROM python:3.11-slim
WORKDIR /app
# What `pip install .` reads: the project file, the README (the long description) and every
# folder of pyproject's package-dir mapping, with their data (schemas/json,
# projections/migrations, api/static).
COPY pyproject.toml README.md ./
COPY tokenquota ./tokenquota
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY projections ./projections
COPY api ./api
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/tokenquota tokenquota \
    && install -d -o tokenquota -g tokenquota -m 0750 /var/lib/tokenquota
# The data dir: faust's data of the worker, the spool of the API's emitter. Owned by the
# user the image runs as; a volume mounted here (docker-compose.yml's api-data) starts as
# a copy of it.
ENV TOKENQUOTA_DATA_DIR=/var/lib/tokenquota
WORKDIR /var/lib/tokenquota
USER tokenquota
CMD ["tokenquota", "--help"]
