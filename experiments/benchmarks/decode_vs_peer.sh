#!/usr/bin/env bash
# The decoding speed comparison with the Hugging Face peer, in one run on one machine, one after
# the other: the machine's load, the peer (transformers beam search with a dict trie,
# ../shared/peers/run.sh after its setup.sh), the load, neo_jax's decode benchmark with the same
# model shape, prompt length, beam width and catalog size, the load again; then the ratio of the
# peer's median trie request to our served-path p50 (in the precision served by default,
# eval.dtype 'auto': bfloat16 on a CPU; and float32 and bfloat16 each) and our throughput.
#
#   nice -n 19 bash experiments/benchmarks/decode_vs_peer.sh [OUT]     (default OUT /tmp/decode_vs_peer)
#
# PEERS_DIR (default: ../shared/peers next to the repository) names the peer's folder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${1:-/tmp/decode_vs_peer}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
PY=${PY:-$ROOT/.venv/bin/python}
mkdir -p "$OUT"
echo "date: $(date -u +%FT%TZ); load before the peer: $(uptime)"
bash "$PEERS_DIR/run.sh" --ns 1000000 --beams 30 --runs 5 --warmup 1 --prompt-len 64 \
  | tee "$OUT/peer.log"
echo "date: $(date -u +%FT%TZ); load before neo_jax: $(uptime)"
echo "neo_jax at commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- neo_jax/decode experiments/benchmarks/decode.py || echo ' (with uncommitted changes in decode)')"
"$PY" -m experiments.benchmarks.decode --num_items=1000000 --presets=smollm2-135m \
  --preset_settings=smollm2-135m:prompt_len=64,smollm2-135m:batch=1 --workdir="$OUT/neo_jax" \
  | tee "$OUT/neo_jax.log"
echo "date: $(date -u +%FT%TZ); load after: $(uptime)"
"$PY" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
peer = None
for line in open(f'{out}/peer.log'):
  if line.startswith('RESULT_JSON '):
    peer = json.loads(line[len('RESULT_JSON '):])
if peer is None:
  sys.exit(f'error: no RESULT_JSON line in {out}/peer.log')
ours = json.load(open(f'{out}/neo_jax/result.json'))
peer_ms = peer['results']['beams30']['trie_N1000000']['median_ms']
summary = {
    'peer_trie_median_ms': peer_ms,
    'peer_unconstrained_median_ms': peer['results']['beams30']['unconstrained']['median_ms'],
    'neo_jax_served_score': ours['served_score'],
    'neo_jax_latency_ms_p50': ours['latency_ms_p50'],
    'neo_jax_latency_ms_p99': ours['latency_ms_p99'],
    'neo_jax_latency_ms_p50_bf16': ours['latency_ms_p50_bf16'],
    'neo_jax_latency_ms_p50_float32_unrolled': ours['latency_ms_p50_float32_unrolled'],
    'neo_jax_throughput_batch': ours['throughput_batch'],
    'neo_jax_throughput_requests_per_s': ours['throughput_requests_per_s'],
    'neo_jax_throughput_requests_per_s_bf16': ours['throughput_requests_per_s_bf16'],
    'neo_jax_served_dtype': ours['served_dtype'],
    'neo_jax_latency_ms_p50_served': ours['latency_ms_p50_served'],
    'peer_over_neo_jax_served_p50': peer_ms / ours['latency_ms_p50_served'],
    'peer_over_neo_jax_p50': peer_ms / ours['latency_ms_p50'],
    'peer_over_neo_jax_p50_bf16': peer_ms / ours['latency_ms_p50_bf16'],
}
json.dump(summary, open(f'{out}/summary.json', 'w'), indent=1)
print(json.dumps(summary))
EOF
