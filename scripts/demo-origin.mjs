// A small demo origin for the local stack: answers every request with what it saw, as JSON.
import { createServer } from "node:http";

const port = Number(process.env.PORT ?? 8081);
createServer((req, res) => {
  const body = JSON.stringify({ origin: "demo", method: req.method, url: req.url, at: new Date().toISOString() }) + "\n";
  res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}).listen(port, "127.0.0.1", () => console.log(`demo origin on http://127.0.0.1:${port}`));
