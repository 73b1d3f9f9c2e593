# The tokenquota image used by docker-compose.yml (not buildable in environments without Docker).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tokenquota ./tokenquota
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY projections ./projections
RUN pip install --no-cache-dir . && useradd --system tokenquota
USER tokenquota
CMD ["tokenquota", "--help"]
