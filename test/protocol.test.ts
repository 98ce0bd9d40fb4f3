// Ensures the client/server protocol is what each end expects: a mismatched
// pair fails at the hello with a clear message naming both versions (exit 76)
// instead of misbehaving, and client.ts, driven by hand through its stdin and
// stdout, binds first, says hello, answers pings, relays the server's verdict
// on each URL to the sender, and exits cleanly when its stdin ends.

import assert from "node:assert/strict";
import { existsSync, lstatSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  FAKE_BROWSER, ROOT, killAtEnd, notOpened, pidFrom, run, runtimeOf, startScript, tempDir, waitForExit, waitUntil,
} from "./helpers.ts";

const ROGUE_CLIENT = join(ROOT, "test/fixtures/rogue-client.mjs");

/** client.ts started by hand, with its stdin as the test's end of the channel. */
async function startClient(t: TestContext) {
  const dir = tempDir(t);
  const socket = join(dir, "sock");
  const client = startScript(t, "client.ts", ["--socket", socket], { stdin: "pipe" });
  const hello = await client.stdout.waitFor(/^hello /, 10_000);
  return { dir, socket, client, hello };
}

test("server whose client speaks urlserver/2 exits 76 naming both versions", { timeout: 20_000 }, async (t) => {
  const dir = tempDir(t);
  const replies = join(dir, "replies");
  const rogue = `exec ${process.execPath} ${ROGUE_CLIENT}`;
  const server = startScript(t, "server.ts", ["--local", "--remote-command", rogue, "--browser", FAKE_BROWSER, "testhost"], {
    env: { FAKE_BROWSER_LOG: join(dir, "opened"), ROGUE_REPLIES: replies, ROGUE_PROTOCOL: "urlserver/2" },
  });
  const roguePid = await pidFrom(`${replies}.pid`, 10_000, "the rogue client");
  killAtEnd(t, roguePid);

  const exit = await waitForExit(server, 10_000, "server");
  assert.equal(exit.code, 76, server.stderr.text());
  assert.match(server.stderr.text(),
    /^\S+ testhost: disconnected: the client speaks "urlserver\/2", this server speaks "urlserver\/1": run "server\.ts --install testhost" to update client\.ts there$/m);
  assert.doesNotMatch(server.stderr.text(), /connected: client pid/);
});

test("client.ts that hears hello urlserver/2 exits 76 with one clear line and removes its socket", { timeout: 20_000 }, async (t) => {
  const { socket, client } = await startClient(t);
  client.child.stdin!.write("hello urlserver/2 keepalive=15\n");
  const exit = await waitForExit(client, 5000, "client");
  assert.equal(exit.code, 76);
  await waitUntil(() => client.stderr.ended, 2000, "the client's stderr to end");
  assert.equal(client.stderr.text(),
    'client: the server speaks "urlserver/2", this client speaks "urlserver/1": use matching copies of server.ts and client.ts');
  assert.equal(existsSync(socket), false, "socket left behind");
});

test("client.ts by hand: binds its socket before any exchange, says hello, answers ping, exits 0 at stdin EOF", { timeout: 20_000 }, async (t) => {
  const { socket, client, hello } = await startClient(t);
  // Nothing has been written to its stdin yet.
  assert.ok(lstatSync(socket).isSocket(), `${socket} is not a socket`);
  assert.equal(hello,
    `hello urlserver/1 runtime=${encodeURIComponent(runtimeOf())} pid=${client.pid} socket=${encodeURIComponent(socket)} version=${JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version}`);

  client.child.stdin!.write("ping\n");
  await client.stdout.waitFor(/^pong$/, 5000);

  client.child.stdin!.end();
  const exit = await waitForExit(client, 5000, "client");
  assert.equal(exit.code, 0);
  assert.equal(existsSync(socket), false, "socket left behind");
  await waitUntil(() => client.stderr.ended, 2000, "the client's stderr to end");
  assert.equal(client.stderr.text(), "");
  assert.deepEqual(client.stdout.seen, [hello, "pong"]);
});

test("client.ts relays the server's answer: `ok ID` makes send.ts exit 0, `error ID reason` exit 65 with the reason", { timeout: 30_000 }, async (t) => {
  const { socket, client } = await startClient(t);
  client.child.stdin!.write("hello urlserver/1 keepalive=15 schemes=http,https\n");
  const env = { URLSERVER_SOCKET: socket };

  const accepted = "https://example.org/accepted";
  const sending = run(t, "send.ts", [accepted], { env });
  const [, acceptedId] = /^open (\d+) (.*)$/.exec(await client.stdout.waitFor(/^open \d+ /, 10_000))!;
  assert.ok(client.stdout.seen.includes(`open ${acceptedId} ${accepted}`), client.stdout.text());
  client.child.stdin!.write(`ok ${acceptedId}\n`);
  const result = await sending;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");

  const declined = "https://example.org/declined";
  const declining = run(t, "send.ts", [declined], { env });
  const line = await client.stdout.waitFor(new RegExp(`^open \\d+ ${declined}$`), 10_000);
  const declinedId = line.split(" ")[1];
  assert.notEqual(declinedId, acceptedId, "an id was reused");
  client.child.stdin!.write(`error ${declinedId} some reason\n`);
  const refusal = await declining;
  assert.equal(refusal.code, 65);
  assert.equal(refusal.stderr, notOpened([`send: refused "${declined}": some reason`], [declined]));

  assert.ok(client.alive(), client.stderr.text());
  assert.equal(client.stderr.text(), "");
});
