#!/usr/bin/env bash
# Patch bytes of patchfeed's diff against npm rfc6902, npm fast-json-patch
# and Python jsonpatch, on the same corpus (benches/diff.rs), in one run.
# Installs the peers locally (benches/peers/node_modules, .venv).
# Usage: bash benches/peers/run.sh   → a Markdown table on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
corpus="$here/corpus"
rm -rf "$corpus"
(cd "$root" && PATCHFEED_DIFF_CORPUS="$corpus" cargo bench --bench diff >/dev/null)
(cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q jsonpatch==1.33
fi
"$here/.venv/bin/python" "$here/peers.py" "$corpus" > "$corpus/python.json"
node "$here/peers.js" "$corpus" > "$corpus/node.json"
python3 - "$corpus" <<'PY'
import json, sys, os
d = sys.argv[1]
ours = json.load(open(os.path.join(d, "ours.json")))
node = json.load(open(os.path.join(d, "node.json")))
print("Patch bytes, every patch serialized by JSON.stringify (see BENCHMARKS.md):")
print()
print("| scenario | doc bytes | patchfeed | rfc6902 | fast-json-patch | python jsonpatch | json-patch crate (before) | patchfeed / best peer |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in ours:
    n = node[name]["normalized"]
    peers = [n["rfc6902"], n["fast_json_patch"], n["python_jsonpatch"]]
    flag = "" if node[name]["rfc6902_ok"] else " (wrong result)"
    print(f"| {name} | {ours[name]['doc']} | {n['patchfeed']} | {n['rfc6902']}{flag} | {n['fast_json_patch']} | {n['python_jsonpatch']} | {n['json_patch_crate']} | {n['patchfeed'] / min(peers):.2f} |")
PY
