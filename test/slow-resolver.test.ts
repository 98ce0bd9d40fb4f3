// Ensures that a desktop resolver slow to answer (no network, a dead DNS
// server) delays a URL by the server's 2 s name-lookup bound at most, not by
// the resolver's own timeout, and that a burst of URLs to one name costs one
// lookup. The server runs in a mount namespace of its own whose
// /etc/resolv.conf names a DNS server that never answers (a UDP socket of
// this test, counting the queries) and gives the resolver 30 s. Needs root
// and unshare.

import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, needs, opened, send, startSession, tempDir } from "./helpers.ts";

const SILENT_DNS = "127.53.0.1";

test("a resolver that never answers delays a URL by the 2 s lookup bound, not its own 30 s; the URL is opened as it is; a second URL to the name is not looked up again", { timeout: 90_000 }, async (t) => {
  if (!needs(t, process.getuid?.() === 0 ? undefined : "root (for a mount namespace)")) return;
  if (!needs(t, existsSync("/usr/bin/unshare") ? undefined : "unshare (Debian: util-linux)")) return;
  const queries: string[] = [];
  const dns = createSocket("udp4");
  dns.on("message", (message) => queries.push(message.toString("latin1")));
  await new Promise<void>((resolve, reject) => {
    dns.once("error", reject);
    dns.bind(53, SILENT_DNS, () => resolve());
  });
  t.after(() => dns.close());
  const dir = tempDir(t);
  const resolvConf = join(dir, "resolv.conf");
  writeFileSync(resolvConf, `nameserver ${SILENT_DNS}\noptions timeout:30 attempts:1\n`);
  const session = await startSession(t, [], {
    dir,
    serverVia: ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"', "sh",
      resolvConf, process.execPath, "--import", "tsx", join(ROOT, "server.ts")],
  });

  const url = "https://slow-to-resolve.example/first";
  const started = performance.now();
  const first = await send(t, session, [url], 40_000);
  const seconds = (performance.now() - started) / 1000;
  assert.equal(first.code, 0, first.stderr);
  assert.ok(queries.some((query) => query.includes("slow-to-resolve")), `the resolver never asked the DNS server (${queries.length} queries)`);
  // 2 s of lookup plus a loaded machine's start of send.ts; the resolver alone would take 30 s.
  assert.ok(seconds < 20, `opened ${seconds.toFixed(1)} s after send.ts started`);
  t.diagnostic(`opened ${seconds.toFixed(1)} s after send.ts started, the lookup given up after 2 s`);

  const asked = queries.length;
  const second = await send(t, session, ["https://slow-to-resolve.example/second"], 40_000);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(queries.length, asked, "the name was looked up again within 10 s");
  assert.deepEqual(opened(session.browserLog).map(([, each]) => each), [url, "https://slow-to-resolve.example/second"]);
});
