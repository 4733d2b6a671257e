# citystream developer entry points. Every target that needs the environment
# depends on `setup`, which is idempotent (a stamp file per step).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
JARS ?= .cache/jars
export JVM_ARGS ?= -Xmx768m

.PHONY: setup demo test test-fast security faults lint up down status bench clean

UDF_JAR := jobs/java/target/citystream-udfs.jar

setup: $(VENV)/.installed $(JARS)/.resolved $(UDF_JAR)

$(VENV)/.installed: pyproject.toml
	@command -v python3.11 >/dev/null || command -v python3 >/dev/null || { echo "setup: python3.11 not found: install Python 3.11"; exit 2; }
	@PYBIN=$$(command -v python3.11 || command -v python3); \
	  $$PYBIN -c 'import sys; sys.exit(0 if sys.version_info[:2]==(3,11) else 1)' || { echo "setup: need Python 3.11, $$PYBIN is $$($$PYBIN -V)"; exit 2; }; \
	  test -x $(PY) || $$PYBIN -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' || { echo "setup: pip install failed: is PyPI reachable?"; exit 2; }
	touch $@

$(JARS)/.resolved: infra/pom.xml
	@command -v java >/dev/null || { echo "setup: java not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)"; exit 2; }
	@command -v mvn >/dev/null || { echo "setup: mvn not found: install Maven (apt-get install maven)"; exit 2; }
	rm -rf $(JARS) && mkdir -p $(JARS)
	mvn -q -B -Dstyle.color=never -f infra/pom.xml -Pkafka dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(abspath $(JARS))/kafka \
	  || { echo "setup: Maven could not resolve the Kafka broker jars: is Maven Central reachable?"; exit 2; }
	mvn -q -B -Dstyle.color=never -f infra/pom.xml -Pflink dependency:copy-dependencies -DincludeScope=runtime -DexcludeArtifactIds=slf4j-api,jsr305 -DoutputDirectory=$(abspath $(JARS))/flink \
	  || { echo "setup: Maven could not resolve the Flink connector jars: is Maven Central reachable?"; exit 2; }
	touch $@

# The jobs' JVM functions (Avro decoding, validation, sensor silence); jobs/common.py rebuilds when stale.
$(UDF_JAR): jobs/java/pom.xml $(wildcard jobs/java/src/main/java/io/citystream/flink/*.java)
	mvn -q -B -Dstyle.color=never -f jobs/java/pom.xml package \
	  || { echo "setup: Maven could not build jobs/java (the jobs' JVM functions)"; exit 2; }

demo: setup
	$(VENV)/bin/citystream demo --secure

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not integration"

security: setup
	$(PY) -m pytest -m security

# kill -9 of each part of the pipeline mid-stream, outside `make test` (tests/test_faults.py).
faults: setup
	$(PY) -m pytest -m faults

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) .ci/lint_imports.py

up: setup
	$(VENV)/bin/citystream stack up

down:
	$(VENV)/bin/citystream stack down

status:
	$(VENV)/bin/citystream stack status

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .cache
