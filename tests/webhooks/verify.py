"""Verifies Standard Webhooks signatures with the reference implementation
(PyPI `standardwebhooks`), independently of patchfeed's own signing.

stdin: one JSON object per line, {"secret", "headers": {name: value}, "body"}.
Verifies each (with the library's default tolerance on webhook-timestamp,
so the messages must be fresh) and prints "verified N"; exits 1 on the first
failure, naming it.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

n = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    m = json.loads(line)
    try:
        Webhook(m["secret"]).verify(m["body"], m["headers"])
    except Exception as e:  # noqa: BLE001 - report whatever the library raised
        print(f"message {n} failed verification: {type(e).__name__}: {e}")
        sys.exit(1)
    n += 1
print(f"verified {n}")
