# One image, both components: `wsgate operator` and `wsgate proxy` (and `wsgate echo`).
# Build: make image (tags wsgate:dev).

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wsgate wsgate
COPY proxy proxy
COPY operator operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
# Non-root, and nothing written outside the state volume: the chart runs the
# containers with a read-only root filesystem.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wsgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
VOLUME /var/lib/wsgate
USER 10001:10001
ENTRYPOINT ["wsgate"]
CMD ["--help"]
