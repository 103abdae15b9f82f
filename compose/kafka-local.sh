#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker+controller) without Docker,
# for tests, CI and local development.
#
#   compose/kafka-local.sh start    fetch the jars (cached), format storage, start,
#                                   return once the broker accepts clients
#   compose/kafka-local.sh stop     stop it
#   compose/kafka-local.sh status   say whether it runs
#
# Settings (environment):
#   KAFKA_PORT             client port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  controller port (default KAFKA_PORT + 1)
#   KAFKA_VERSION          Apache Kafka version from Maven Central (default 4.1.1)
#   KAFKA_LOCAL_DIR        state: jars, config, data, log, pid (default compose/.kafka)
#   KAFKA_HEAP             JVM heap (default 768m)
#   KAFKA_KEEP_DATA        1: start on the data of the previous run on this port
#                          (a broker restart) instead of fresh storage
#
# By default every start formats fresh storage: this is a throwaway broker for a test
# box (one replica everywhere, no rebalance delay), not a production setup.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
version="${KAFKA_VERSION:-4.1.1}"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
state="${KAFKA_LOCAL_DIR:-$here/.kafka}"
heap="${KAFKA_HEAP:-768m}"
libs="$state/libs-$version-2"
run="$state/run-$port"
pidfile="$run/kafka.pid"

log() { echo "kafka-local: $*" >&2; }

fetch_jars() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || { log "Maven (mvn) is needed to fetch the broker's jars"; exit 1; }
  command -v java >/dev/null || { log "Java 17+ is needed to run the broker"; exit 1; }
  log "fetching Apache Kafka $version jars from Maven Central (once; cached in $libs)"
  mkdir -p "$libs"
  cat >"$state/pom-$version.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>embedstream.local</groupId><artifactId>kafka-local</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  mvn -q -B -Dstyle.color=never -f "$state/pom-$version.xml" dependency:copy-dependencies -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

is_running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if is_running; then
    log "already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    return 0
  fi
  if port_open "$port"; then
    log "port $port is taken by another process; set KAFKA_PORT"
    exit 1
  fi
  fetch_jars
  if [ "${KAFKA_KEEP_DATA:-0}" = "1" ] && [ -f "$run/server.properties" ]; then
    log "restarting on the data of the previous run"
    nohup java "-Xms128m" "-Xmx$heap" "-XX:+UseG1GC" "-Djava.awt.headless=true" \
      "-Dlog4j2.configurationFile=$run/log4j2.properties" -cp "$libs/*" \
      kafka.Kafka "$run/server.properties" >>"$run/stdout.log" 2>&1 &
    echo $! >"$pidfile"
    wait_started
    return 0
  fi
  rm -rf "$run"
  mkdir -p "$run/data"
  cat >"$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$run/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=-1
PROPS
  cat >"$run/log4j2.properties" <<LOG
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $run/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
LOG
  local cp="$libs/*"
  local jvm=(java "-Xms128m" "-Xmx$heap" "-XX:+UseG1GC" "-Djava.awt.headless=true"
             "-Dlog4j2.configurationFile=$run/log4j2.properties" -cp "$cp")
  local cluster
  cluster="$("${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$run/server.properties" \
    >"$run/format.log" 2>&1 || { log "formatting storage failed:"; cat "$run/format.log" >&2; exit 1; }
  nohup "${jvm[@]}" kafka.Kafka "$run/server.properties" >"$run/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  wait_started
}

count_started() {
  local n
  n="$(grep -c "Kafka Server started" "$run/server.log" 2>/dev/null)"
  echo "${n:-0}"
}

wait_started() {
  local waited=0
  local mark
  mark="$(count_started)"
  until [ "$(count_started)" -gt "$mark" ] && port_open "$port"; do
    if ! is_running; then
      log "the broker exited during start-up; last lines of its log:"
      tail -n 30 "$run/server.log" "$run/stdout.log" >&2 2>/dev/null || true
      exit 1
    fi
    if [ "$waited" -ge 1200 ]; then
      log "the broker did not start within 120 s; see $run/server.log"
      stop
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  log "Apache Kafka $version running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
}

stop() {
  if ! is_running; then
    log "not running on port $port"
    rm -f "$pidfile"
    return 0
  fi
  local pid
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if is_running; then echo "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
