// A receiver verifying with the npm `standardwebhooks` package, on the raw bytes (POST
// body or GET query string exactly as received), and checking that the body survives
// JSON.stringify(JSON.parse(body)) unchanged. One JSON line per request on stdout.
const express = require('express');
const { Webhook } = require('standardwebhooks');

const wh = new Webhook(process.env.WEBHOOK_SECRET);
const app = express();
app.use(express.raw({ type: () => true, limit: '10mb' }));

app.all('/{*path}', (req, res) => {
  const query = req.originalUrl.includes('?') ? req.originalUrl.slice(req.originalUrl.indexOf('?') + 1) : '';
  const raw = req.method === 'GET' ? query : (Buffer.isBuffer(req.body) ? req.body.toString('utf8') : '');
  const line = { method: req.method, path: req.path, query, id: req.headers['webhook-id'] };
  try {
    // A GET's signed content is the query string, not JSON: do not let verify() parse it.
    wh.verify(raw, req.headers, { jsonParse: req.method !== 'GET' });
    line.verified = true;
  } catch (err) {
    line.verified = false;
    line.error = String(err.message || err);
  }
  if (req.method !== 'GET') {
    try {
      line.roundtrip = JSON.stringify(JSON.parse(raw)) === raw;
    } catch (err) {
      line.roundtrip = false;
      line.error = (line.error || '') + ' parse: ' + err.message;
    }
  }
  console.log(JSON.stringify(line));
  const ok = line.verified && line.roundtrip !== false;
  res.status(ok ? 200 : 401).json(line);
});

const server = app.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`LISTENING ${server.address().port}`);
});
