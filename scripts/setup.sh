#!/usr/bin/env bash
# One command that installs everything cryptomon needs on a Debian 12 machine, with no Docker:
#   - Debian packages: PostgreSQL 15 (+ server headers), JDK 17, Maven, build tools
#   - TimescaleDB (Apache edition) built from Debian trixie's source package against PG 15
#   - Apache Kafka 4 broker jars (KRaft) and Spark's Kafka connector jars, from Maven Central
#   - a project-local virtualenv (.venv) with the `cryptomon` CLI
# Idempotent: every step checks what is already there, so a second run takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS=${CRYPTOMON_DEPS_DIR:-$ROOT/.deps}
PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
MVN_DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.6.1

step() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
ok() { printf '    %s\n' "$*"; }
die() { printf '\033[1;31msetup failed:\033[0m %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: installing Debian packages needs one of them"
  SUDO=sudo
fi
command -v apt-get >/dev/null || die "apt-get not found: this setup targets Debian 12 (bookworm)"
mkdir -p "$DEPS"

# ---------------------------------------------------------------- Debian packages
APT_PACKAGES=(postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR postgresql-server-dev-$PG_MAJOR
  openjdk-17-jdk-headless maven cmake gcc make dpkg-dev libssl-dev libkrb5-dev
  python3 python3-venv
  chromium)  # the browser of the web view's test (driven by Playwright; no browser download)
step "Debian packages"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The JDK / Python may come from elsewhere (pyenv, Temurin): accept a working one on PATH.
if command -v javac >/dev/null && javac -version 2>&1 | grep -qE ' (1[7-9]|2[0-9])\.'; then
  missing=("${missing[@]/openjdk-17-jdk-headless}")
fi
if command -v python3 >/dev/null && python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}"); missing=("${missing[@]/python3}")
fi
read -r -a missing <<<"${missing[*]:-}"
if [ "${#missing[@]}" -gt 0 ]; then
  ok "installing: ${missing[*]}"
  $SUDO apt-get update -q >/dev/null || die "apt-get update failed (is Debian's mirror reachable?)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
else
  ok "all present"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is required ($(python3 --version))"

# ---------------------------------------------------------------- TimescaleDB from source
step "TimescaleDB (Apache edition) for PostgreSQL $PG_MAJOR"
PKGLIBDIR=$($PG_CONFIG --pkglibdir)
SHAREDIR=$($PG_CONFIG --sharedir)
installed_tsdb() { ls "$PKGLIBDIR"/timescaledb-2.*.so 2>/dev/null | head -1; }
if [ -n "$(installed_tsdb)" ] && [ -f "$SHAREDIR/extension/timescaledb.control" ]; then
  ok "already installed: $(basename "$(installed_tsdb)")"
else
  # Debian 12 has no timescaledb package; trixie's source package builds cleanly against PG 15.
  # A private apt configuration keeps the trixie source line out of the system's sources.
  APT_DIR="$DEPS/apt-trixie-src"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/sources.list.d"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$APT_DIR/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=$APT_DIR/sources.list.d"
    -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o "APT::Sandbox::User=root")
  apt-get "${APT_OPTS[@]}" update -q >/dev/null || die "could not read Debian trixie's source index"
  SRC="$DEPS/src/timescaledb"
  rm -rf "$SRC" && mkdir -p "$SRC"
  (cd "$SRC" && apt-get "${APT_OPTS[@]}" source --download-only timescaledb >/dev/null 2>&1) \
    || die "apt-get source timescaledb (Debian trixie) failed"
  (cd "$SRC" && dpkg-source -x ./*.dsc tree >/dev/null) || die "dpkg-source -x failed"
  ok "building $(basename "$SRC"/*.dsc .dsc) (under a minute)"
  (cd "$SRC/tree" && ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
      -DPG_CONFIG="$PG_CONFIG" >"$SRC/build.log" 2>&1 \
    && make -j"$(nproc)" -C build >>"$SRC/build.log" 2>&1 \
    && $SUDO make -C build install >>"$SRC/build.log" 2>&1) || die "TimescaleDB build failed: see $SRC/build.log"
  [ -n "$(installed_tsdb)" ] || die "TimescaleDB built but no timescaledb-2.*.so in $PKGLIBDIR"
  ok "installed $(basename "$(installed_tsdb)")"
fi

# ---------------------------------------------------------------- jars from Maven Central
fetch_jars() { # name pom destination
  local name=$1 pom=$2 dest=$3 stamp
  stamp=$(sha256sum "$pom" | cut -c1-16)
  if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ]; then
    ok "$name: $(ls "$dest"/*.jar | wc -l) jars already in $dest"
    return
  fi
  rm -rf "$dest" && mkdir -p "$dest"
  mvn -q -B -f "$pom" "$MVN_DEP_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$dest" \
    || die "$name: mvn could not resolve $pom from Maven Central"
  echo "$stamp" >"$dest/.stamp"
  ok "$name: $(ls "$dest"/*.jar | wc -l) jars into $dest"
}
step "Apache Kafka broker (KRaft) and Spark's Kafka connector"
fetch_jars "kafka broker" "$ROOT/setup/maven/kafka/pom.xml" "$DEPS/kafka"
fetch_jars "spark-sql-kafka" "$ROOT/setup/maven/spark-kafka/pom.xml" "$DEPS/spark-jars"

# ---------------------------------------------------------------- Python
step "Python virtualenv (.venv) with cryptomon"
VENV="$ROOT/.venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "python3 -m venv failed"
stamp=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ] && "$VENV/bin/cryptomon" --help >/dev/null 2>&1; then
  ok "up to date"
else
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null || die "pip upgrade failed"
  "$VENV/bin/pip" install -q -e "$ROOT[dev,compat]" || die "pip install -e .[dev,compat] failed"
  echo "$stamp" >"$VENV/.stamp"
  ok "installed $("$VENV/bin/pip" show cryptomon 2>/dev/null | grep ^Version)"
fi

# The PySpark jar set and the connector must agree, or the streaming job fails at start.
pyspark_version=$("$VENV/bin/python" -c 'import pyspark; print(pyspark.__version__)')
connector=$(ls "$DEPS/spark-jars" | grep -o 'spark-sql-kafka-0-10_2.13-[0-9.]*\.jar' | sed 's/.*_2.13-//; s/\.jar//')
[ "$pyspark_version" = "$connector" ] || die "PySpark $pyspark_version but spark-sql-kafka $connector: align setup/maven/spark-kafka/pom.xml"

step "done: run the tests with ./scripts/test.sh, the local stack with .venv/bin/cryptomon services up"
