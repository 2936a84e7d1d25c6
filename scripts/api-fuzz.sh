#!/usr/bin/env bash
# HTTP API fuzzing: schemathesis, driven by the API's own OpenAPI document
# (GET /v1/openapi.json), against a local three-node cluster on 127.0.0.1.
#
#   scripts/api-fuzz.sh                    # the bounded CI run
#   API_FUZZ_EXAMPLES=200 scripts/api-fuzz.sh
#   API_FUZZ_SEED=7 scripts/api-fuzz.sh    # another fixed seed
#
# It installs schemathesis into a venv (target/api-fuzz-venv) if missing, builds
# `cairn`, starts three `cairn server` processes on free loopback ports with temporary
# data dirs, runs schemathesis with a bounded number of examples per operation and
# the checks below, stops the cluster and exits non-zero on any failure. Checks:
# no 5xx (`not_a_server_error`), and the answer's status, content type, headers and
# body conform to the document. Backup destinations are narrowed (in a copy of the
# document) to directories inside the run's temporary directory and `create_backup`
# gets valid data only: the API lets a client name any path or bucket, and a fuzzer
# must write nowhere else and reach no network. docs/FUZZING.md says what it found.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${API_FUZZ_EXAMPLES:-100}
SEED=${API_FUZZ_SEED:-20261201}
VENV=${API_FUZZ_VENV:-target/api-fuzz-venv}
SCHEMATHESIS=schemathesis==4.32.5
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance

# python3 (with venv) and curl: present on the development image; from Debian if not.
if ! command -v curl >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "== installing python3, python3-venv and curl (apt)"
  apt-get update -qq && apt-get install -y -qq python3 python3-venv curl >/dev/null
fi
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "${SCHEMATHESIS#*==}"; then
  echo "== installing $SCHEMATHESIS into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SCHEMATHESIS"
fi

echo "== cargo build --bin cairn"
cargo build --quiet -p cairn-server --bin cairn
bin=$(cd "${CARGO_TARGET_DIR:-target}/debug" && pwd)/cairn
venv=$(cd "$VENV" && pwd)
report=$PWD/${API_FUZZ_REPORT_DIR:-target/api-fuzz-report}

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-api-fuzz.XXXXXX")
pids=()
status=1
stop_cluster() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/node*.log; do
      echo "== last lines of $log"
      tail -n 20 "$log" || true
    done
  fi
  rm -rf "$work"
}
trap stop_cluster EXIT

# Six free loopback ports (HTTP and peer for three nodes), held until all are chosen.
read -r -a ports < <(python3 - <<'PY'
import socket
held = [socket.socket() for _ in range(6)]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
)
cluster="1=127.0.0.1:${ports[3]},2=127.0.0.1:${ports[4]},3=127.0.0.1:${ports[5]}"
# Each node runs inside the temp dir, so a relative destination lands there, and with
# S3 pointed at a closed loopback port, so an s3:// one reaches no network.
for id in 1 2 3; do
  (cd "$work" && AWS_ENDPOINT=http://127.0.0.1:9 AWS_ALLOW_HTTP=true AWS_REGION=none \
    exec "$bin" server --id "$id" --data-dir "$work/node$id" \
    --http "127.0.0.1:${ports[$((id - 1))]}" --peer "127.0.0.1:${ports[$((id + 2))]}" \
    --initial-cluster "$cluster" --backup-dir "$work/backups" --enable-debug \
    >"$work/node$id.log" 2>&1) &
  pids+=("$!")
done
url="http://127.0.0.1:${ports[0]}"

echo "== waiting for $url/ready"
for _ in $(seq 1 120); do
  ready=0
  for id in 1 2 3; do
    curl -fsS "http://127.0.0.1:${ports[$((id - 1))]}/ready" >/dev/null 2>&1 && ready=$((ready + 1))
  done
  [ "$ready" -eq 3 ] && break
  sleep 0.5
done
[ "$ready" -eq 3 ] || { echo "the cluster did not become ready in 60 s" >&2; exit 1; }

# The served document, with backup destinations narrowed to the run's directory.
curl -fsS "$url/v1/openapi.json" >"$work/openapi.served.json"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
with open(f"{work}/openapi.served.json") as f:
    doc = json.load(f)
doc["components"]["schemas"]["CreateBackup"]["properties"]["destination"] = {
    "type": "string",
    # Two under --backup-dir (allowed), one outside it (403), two malformed (400).
    "enum": [f"{work}/backups/a", f"file://{work}/backups/b", f"{work}/elsewhere",
             "ftp://127.0.0.1/nowhere", " "],
}
with open(f"{work}/openapi.json", "w") as f:
    json.dump(doc, f)
PY

# Two passes: every operation but `create_backup` with valid and invalid data, then
# `create_backup` with valid data only. Invalid data ignores the narrowed enum, and an
# arbitrary destination is a directory the server would create wherever it names.
# (In the temp dir too: schemathesis keeps a `.schemathesis/` cache where it runs.)
schemathesis() {
  (cd "$work" && "$venv/bin/schemathesis" run "$work/openapi.json" --url "$url" \
    --checks "$CHECKS" --max-examples "$EXAMPLES" --seed "$SEED" \
    --workers 2 --request-timeout 30 --no-color \
    --report junit --report-dir "$report" "$@")
}
echo "== schemathesis: $EXAMPLES examples per operation, seed $SEED, checks $CHECKS"
start=$(date +%s)
set +e
schemathesis --exclude-operation-id create_backup --phases examples,coverage,fuzzing,stateful
status=$?
if [ "$status" -eq 0 ]; then
  schemathesis --include-operation-id create_backup --mode positive --phases examples,coverage,fuzzing
  status=$?
fi
set -e
echo "== schemathesis finished in $(( $(date +%s) - start )) s with status $status"
exit "$status"
