// A streamdata.io application, as written against the real SDK, pointed at
// patchfeed. Driven by tests/streamdata_sdk.rs.
//
//   node client.js <mode> <patchfeed base> <upstream url> <token> [header]...
//
// mode: "root"   — the one-host change: the SDK's own StreamDataServer with
//                  patchfeed's host and port (patchfeed serves /<url> too);
//       "prefix" — `server` pointed at <base>/streamdata/.
//
// Prints one JSON line per SDK callback on stdout:
//   {"cb":"open"} {"cb":"data","doc":...} {"cb":"patch","doc":...,"ops":n}
//   {"cb":"error","type":..,"message":..,"status":..}
// and exits when stdin closes (the test ends it).
'use strict';

const path = require('path');
const sdk = require(path.join(__dirname, 'node_modules/streamdataio-js-sdk/dist/bundles/streamdataio-node.js'));
const jsonpatch = require('fast-json-patch');

const [mode, base, url, token, ...headers] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const stream = sdk.createEventSource(url, token, headers);
const target = new URL(base);
if (mode === 'root') {
  const Server = stream.server.constructor;
  stream.server = new Server(target.protocol.replace(':', ''), target.hostname, target.port);
} else {
  stream.server = { getFullUrl: (clientUrl) => `${base}/streamdata/${clientUrl.toString()}` };
}

let doc = null;
stream
  .onOpen(() => out({ cb: 'open' }))
  .onData((data) => {
    doc = data;
    out({ cb: 'data', doc });
  })
  .onPatch((patch) => {
    doc = jsonpatch.applyPatch(doc, patch, true, false).newDocument;
    out({ cb: 'patch', doc, ops: patch.length });
  })
  .onError((e) => out({ cb: 'error', type: e.type, message: e.message, status: e.status, source: e.source }));
stream.open();

process.stdin.resume();
process.stdin.on('end', () => {
  out({ cb: 'closed', connected: stream.isConnected() });
  stream.close();
  process.exit(0);
});
