// Ensures that URLs arriving while the channel to the server is congested
// are all answered once it drains, in every runtime: a sender that writes its
// lines and half-closes at once must not lose them. Under Bun, 'end' comes
// while the socket is paused, and the client once finished such a connection
// with its lines still buffered (send.ts said "the server went away").
// The test plays the server: it stops reading the client's stdout until the
// pipe is full, then reads and answers every "open" line.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, needs, start, tempDir, waitUntil } from "./helpers.ts";

const runtimes: Array<[string, string[]]> = [
  ["node", [process.execPath, "--import", "tsx"]],
  ["bun", [join(ROOT, ".runtimes/node_modules/.bin/bun")]],
];

for (const [name, command] of runtimes) {
  test(`${name}: lines sent and half-closed while the channel is congested are all answered`, { timeout: 90_000 }, async (t) => {
    if (!needs(t, existsSync(command[0]) ? undefined : `${name} (npm run runtimes)`)) return;
    const socket = join(tempDir(t), "sock");
    const client = start(t, "client.ts", command[0], [...command.slice(1), join(ROOT, "client.ts"), "--socket", socket],
      { env: { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: "" } });
    await client.stdout.waitFor(/^hello /, 15_000);
    client.child.stdin!.write("hello urlserver/1 keepalive=3600 schemes=https\n");
    client.child.stdout!.pause();
    // Long URLs, far more than the pipe to the "server" and its reader hold.
    const long = `https://example.org/${"a".repeat(8000)}`;
    for (let i = 0; i < 8; i++) {
      const filler = connect(socket);
      t.after(() => filler.destroy());
      filler.on("error", () => {});
      filler.write(`${long}\n`.repeat(16));
    }
    const sender = connect(socket);
    t.after(() => sender.destroy());
    let received = "";
    sender.setEncoding("utf8");
    sender.on("data", (chunk: string) => { received += chunk; });
    sender.on("error", () => {});
    await new Promise<void>((resolve) => sender.on("connect", resolve));
    sender.end("https://example.org/one\nhttps://example.org/two\nhttps://example.org/three\n");
    // Give the runtime its chance to see the end while congested.
    await new Promise((resolve) => sender.on("finish", resolve));
    await new Promise((resolve) => setTimeout(resolve, 500));
    client.child.stdout!.resume();
    const answered = new Set<string>();
    const answer = setInterval(() => {
      for (const line of client.stdout.seen) {
        const match = /^open (\d+) /.exec(line);
        if (match && !answered.has(match[1])) {
          answered.add(match[1]);
          client.child.stdin!.write(`ok ${match[1]}\n`);
        }
      }
    }, 20);
    t.after(() => clearInterval(answer));
    await waitUntil(() => received.split("\n").length > 3 || sender.destroyed, 30_000, "three answers");
    clearInterval(answer);
    assert.equal(received, "ok\nok\nok\n");
  });
}
