"""Patch sizes of Python jsonpatch on the corpus pairs (checked by applying)."""
import json
import os
import sys

import jsonpatch

d = sys.argv[1]
out = {}
for f in sorted(os.listdir(d)):
    if not f.endswith(".a.json"):
        continue
    name = f[: -len(".a.json")]
    a = json.load(open(os.path.join(d, f), encoding="utf-8"))
    b = json.load(open(os.path.join(d, name + ".b.json"), encoding="utf-8"))
    p = jsonpatch.make_patch(a, b)
    assert p.apply(a) == b, name
    with open(os.path.join(d, name + ".python_jsonpatch.patch.json"), "w", encoding="utf-8") as fh:
        json.dump(p.patch, fh, separators=(",", ":"), ensure_ascii=False)
    # Same serialization as the others: compact, UTF-8.
    out[name] = {"python_jsonpatch": len(json.dumps(p.patch, separators=(",", ":"), ensure_ascii=False).encode())}
json.dump(out, sys.stdout, indent=1)
