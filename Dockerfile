# One image for the cryptomon processes (ingest, worker, spark, dashboard, notify), used by docker
# compose's `app` profile. Not built on the development machines (no Docker engine there): see README.

# Spark's Kafka connector, resolved from Maven Central by the same pom the local setup uses.
FROM maven:3.9-eclipse-temurin-17 AS jars
COPY setup/maven/spark-kafka/pom.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory=/deps/spark-jars

FROM python:3.11-slim-bookworm
# Java for the Spark driver (PySpark starts a JVM)
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 cryptomon
WORKDIR /app
# every dependency at the version and hashes of requirements.lock (pip-compile --generate-hashes), then
# cryptomon itself without resolving anything again
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY src ./src
RUN pip install --no-cache-dir --no-deps . && mkdir -p /var/lib/cryptomon/archive && chown -R cryptomon /var/lib/cryptomon
COPY --from=jars /deps /opt/cryptomon/deps
ENV CRYPTOMON_DEPS_DIR=/opt/cryptomon/deps \
    CRYPTOMON_STATE_DIR=/var/lib/cryptomon \
    CRYPTOMON_SPARK_CHECKPOINT_DIR=/var/lib/cryptomon/spark-checkpoints \
    PYTHONUNBUFFERED=1
USER cryptomon
ENTRYPOINT ["cryptomon"]
CMD ["--help"]
