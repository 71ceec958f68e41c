// stdin: a JSON array of texts; stdout: JSON.stringify(JSON.parse(text)) of each.
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const out = JSON.parse(input).map((text) => {
    try {
      return JSON.stringify(JSON.parse(text));
    } catch (err) {
      return `ERROR ${err.message}`;
    }
  });
  process.stdout.write(JSON.stringify(out));
});
