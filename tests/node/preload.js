// Loaded with `node -r ./preload.js axie_snippet.js`: lets the reference product's
// snippet run unchanged. It listens on a free port instead of 3000 (tests run in
// parallel) and its CRM calls, which the snippet leaves to the reader, print what they got.
const http = require('http');

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (port, ...rest) {
  const server = listen.call(this, Number(process.env.PORT || 0), '127.0.0.1', ...rest.filter((a) => typeof a === 'function'));
  server.on('listening', () => console.log(`LISTENING ${server.address().port}`));
  return server;
};

function crm(kind) {
  return (data) => console.log(`${kind} ${JSON.stringify(data)}`);
}
globalThis.addUserToCRM = crm('CRM-ADD');
globalThis.updateUserInCRM = crm('CRM-UPDATE');
