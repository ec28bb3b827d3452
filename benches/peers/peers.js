// Patch sizes of npm rfc6902 and fast-json-patch on the corpus pairs.
// Each patch is checked by applying it. Usage: node peers.js DIR
'use strict';
const fs = require('fs');
const path = require('path');
const rfc6902 = require('rfc6902');
const fjp = require('fast-json-patch');
const assert = require('assert');

const dir = process.argv[2];
const out = {};
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.a.json')).sort()) {
  const name = f.slice(0, -'.a.json'.length);
  const a = JSON.parse(fs.readFileSync(path.join(dir, f)));
  const b = JSON.parse(fs.readFileSync(path.join(dir, name + '.b.json')));
  const p1 = rfc6902.createPatch(a, b);
  const c1 = JSON.parse(JSON.stringify(a));
  const r1 = rfc6902.applyPatch(c1, p1);
  const p2 = fjp.compare(a, b);
  const c2 = fjp.applyPatch(JSON.parse(JSON.stringify(a)), p2).newDocument;
  assert.deepStrictEqual(c2, b, `fast-json-patch on ${name}`);
  fs.writeFileSync(path.join(dir, name + '.rfc6902.patch.json'), JSON.stringify(p1));
  fs.writeFileSync(path.join(dir, name + '.fast_json_patch.patch.json'), JSON.stringify(p2));
  out[name] = {
    rfc6902: Buffer.byteLength(JSON.stringify(p1)),
    rfc6902_ok: r1.every((e) => e === null) && JSON.stringify(c1) === JSON.stringify(b),
    fast_json_patch: Buffer.byteLength(JSON.stringify(p2)),
  };
}
// Every tool's patch measured by one serializer (JSON.stringify), so that
// number spelling (61002.0 vs 61002) does not count as a diff difference.
const tools = ['patchfeed', 'rfc6902', 'fast_json_patch', 'python_jsonpatch', 'json_patch_crate'];
for (const name of Object.keys(out)) {
  out[name].normalized = {};
  for (const t of tools) {
    const f = path.join(dir, `${name}.${t}.patch.json`);
    if (fs.existsSync(f)) out[name].normalized[t] = Buffer.byteLength(JSON.stringify(JSON.parse(fs.readFileSync(f, 'utf8'))));
  }
}
process.stdout.write(JSON.stringify(out, null, 1));
