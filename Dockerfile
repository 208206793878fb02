# Slim, non-root, reproducible: versions pinned by requirements.lock (pip freeze of a tested venv).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY eventbot ./eventbot
COPY events ./events
COPY services ./services
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app eventbot
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels eventbot && rm -rf /wheels
COPY schemas ./schemas
USER eventbot
ENV PYTHONUNBUFFERED=1
EXPOSE 8080 9100
ENTRYPOINT []
CMD ["eventbot", "--help"]
