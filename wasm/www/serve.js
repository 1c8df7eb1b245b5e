// A static file server for the demo, on loopback only: node www/serve.js [port]
// Serves the wasm/ directory, so the page is at /www/index.html and the package at /pkg/.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.css': 'text/css' };

function createServer() {
  return http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const file = path.resolve(root, '.' + decodeURIComponent(url.pathname));
    if (!file.startsWith(root + path.sep)) { res.writeHead(403).end(); return; }
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404).end('not found'); return; }
      res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' }).end(data);
    });
  });
}

if (require.main === module) {
  const port = Number(process.argv[2] ?? 8081);
  createServer().listen(port, '127.0.0.1', () => console.log(`demo: http://127.0.0.1:${port}/www/index.html`));
}

module.exports = { createServer };
