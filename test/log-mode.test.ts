// Ensures that the --log file, which holds every URL with its tokens, is made
// owner-only (0600) whatever the umask, and that an existing one other users
// may read is used with a warning line saying so. It was once made 0644.

import assert from "node:assert/strict";
import { statSync, writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, start, tempDir, waitForExit, waitUntil } from "./helpers.ts";

/** Runs server.ts under umask 000 with --log, over an ssh that cannot be run: it exits 69 once the log is prepared. */
async function serverWithLog(t: Parameters<typeof tempDir>[0], log: string) {
  const server = start(t, "server.ts", "sh", ["-c", 'umask 000 && exec "$@"', "sh",
    process.execPath, "--import", "tsx", join(ROOT, "server.ts"), "--ssh", join(tempDir(t), "no-ssh"), "--log", log, "host"], { stdin: "ignore" });
  const exit = await waitForExit(server, 20_000, "server.ts");
  await waitUntil(() => server.stderr.ended, 2000, "server.ts's stderr to end");
  return { ...exit, stderr: server.stderr.seen };
}

test("--log makes its file 0600 even under umask 000, without a warning", { timeout: 30_000 }, async (t) => {
  const log = join(tempDir(t), "urls.log");
  const result = await serverWithLog(t, log);
  assert.equal(result.code, 69);
  assert.equal((statSync(log).mode & 0o777).toString(8), "600");
  assert.deepEqual(result.stderr.filter((line) => line.includes("--log")), []);
});

test("an existing --log file others may read: used, with one warning line saying so", { timeout: 30_000 }, async (t) => {
  const log = join(tempDir(t), "urls.log");
  writeFileSync(log, "");
  chmodSync(log, 0o644);
  const result = await serverWithLog(t, log);
  assert.equal(result.code, 69);
  assert.deepEqual(result.stderr.filter((line) => line.includes("--log")), [
    `server: warning: the --log file "${log}" is readable by others (mode 644): it holds every URL, tokens included (chmod 600 it)`,
  ]);
  assert.equal((statSync(log).mode & 0o777).toString(8), "644", "the user's file was changed");
});
