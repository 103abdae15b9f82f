#!/usr/bin/env bash
# The peers' own virtual environment for benchmarks/bench_kafka.py: Bytewax, Pathway
# and Quix Streams with numpy and faiss, never runtime dependencies of embedstream.
#
#   bash benchmarks/peers-venv.sh        # creates benchmarks/.peers-venv (once)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.peers-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet \
    "bytewax==0.21.1" "quixstreams==3.28.1" "pathway==0.33.0" \
    "numpy>=1.26" "faiss-cpu>=1.8"
echo "peers ready: $venv/bin/python"
