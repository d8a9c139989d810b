# One image for every loradeck service; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /srv/loradeck
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir -c constraints.txt .
COPY alembic.ini ./
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
COPY assets ./assets
ENV LORADECK_DATA_DIR=/data
EXPOSE 8000
CMD ["loradeck", "web", "--host", "0.0.0.0"]
