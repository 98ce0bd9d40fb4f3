// Ensures that the turn clients take at start (the directory PATH.lock) can
// never hold a client back for good: a lock dated in the future (the clock
// was stepped back after a client was killed) counts as stale, as an old one
// does, and the client starts. It once made every client wait forever, silently.

import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdirSync, utimesSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { startScript, tempDir } from "./helpers.ts";

for (const [when, offsetSeconds] of [["an hour in the future", 3600], ["an hour ago", -3600]] as const) {
  test(`a PATH.lock dated ${when} is taken over: the client starts`, { timeout: 30_000 }, async (t) => {
    const socket = join(tempDir(t), "sock");
    mkdirSync(`${socket}.lock`, { mode: 0o700 });
    const date = new Date(Date.now() + offsetSeconds * 1000);
    utimesSync(`${socket}.lock`, date, date);
    const client = startScript(t, "client.ts", ["--socket", socket], { env: { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: "" } });
    await client.stdout.waitFor(/^hello /, 15_000);
    assert.ok(lstatSync(socket).isSocket());
    assert.equal(existsSync(`${socket}.lock`), false, "the lock was not removed after the client's turn");
  });
}
