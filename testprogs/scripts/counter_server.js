// A node server for testprogs/tests/servers.rs: HTTP on the first port
// (GET /inc adds one to a counter and answers it, GET /stat answers
// "count=N"), and a stream port: each connection sends numbered lines
// 1, 2, 3, ... and "end", and is answered "got=G bad=B last=L" (B counts
// values that were not the one after the last).
'use strict';
const http = require('http');
const net = require('net');
const [httpPort, streamPort] = process.argv.slice(2).map(Number);
let count = 0;

http.createServer((req, res) => {
  let body;
  if (req.url === '/inc') {
    count += 1;
    body = `${count}\n`;
  } else if (req.url === '/stat') {
    body = `count=${count}\n`;
  } else {
    res.writeHead(404);
    res.end();
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}).listen(httpPort, '0.0.0.0');

net.createServer((c) => {
  let buf = '';
  let last = 0;
  let got = 0;
  let bad = 0;
  c.setEncoding('ascii');
  c.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line === 'end') {
        c.end(`got=${got} bad=${bad} last=${last}\n`);
        return;
      }
      const n = /^[0-9]+$/.test(line) ? Number(line) : -1;
      if (n === last + 1) {
        got += 1;
      } else {
        bad += 1;
        console.log(`stream: got ${line} after ${last}`);
      }
      last = n;
    }
  });
  c.on('error', (e) => console.log(`stream error: ${e}`));
}).listen(streamPort, '0.0.0.0', () => console.log('LISTENING'));
