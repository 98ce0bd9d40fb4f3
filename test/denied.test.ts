// Ensures that a socket path the user may not reach (permission denied on a
// directory on the way: a $XDG_RUNTIME_DIR left from another user after su)
// is a clear refusal, exit 77, in both scripts: send.ts says why and prints
// the URL to be copied; the client says why. Both once ended "internal error" (70).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { ROOT, needs, notOpened, start, tempDir, waitForExit, waitUntil } from "./helpers.ts";
import { addThrowawayUser } from "./fixtures/sshd.ts";

const WHY = "permission denied on the way to it (another user's directory, such as a $XDG_RUNTIME_DIR left from before su?)";

/** Runs script as a throwaway user with $XDG_RUNTIME_DIR set to a directory of root's (mode 0700). */
async function asOtherUser(t: TestContext, script: "client.ts" | "send.ts", args: string[]) {
  let missing: string | undefined;
  if (process.getuid?.() !== 0) missing = "root, to run the scripts as another user";
  else {
    try {
      execFileSync("sh", ["-c", "command -v useradd"], { stdio: "pipe" });
    } catch {
      missing = "useradd";
    }
  }
  if (!needs(t, missing)) return undefined;
  const user = addThrowawayUser(t, tempDir(t));
  const runtimeDir = tempDir(t);
  const proc = start(t, script, process.execPath, ["--import", "tsx", join(ROOT, script), ...args], {
    env: { URLSERVER_SOCKET: "", XDG_RUNTIME_DIR: runtimeDir, HOME: user.home, TMPDIR: join(user.home, "tmp") },
    stdin: "ignore", uid: user.uid, gid: user.gid,
  });
  const exit = await waitForExit(proc, 20_000, script);
  await waitUntil(() => proc.stderr.ended, 2000, `${script}'s stderr to end`);
  return { ...exit, stderr: proc.stderr.text(), socket: join(runtimeDir, "urlserver.sock") };
}

test("send.ts with permission denied on the way to the socket: exit 77, saying why, the URL printed", { timeout: 60_000 }, async (t) => {
  const url = "https://example.org/after-su";
  const result = await asOtherUser(t, "send.ts", [url]);
  if (!result) return;
  assert.equal(result.code, 77);
  assert.equal(result.stderr, notOpened([`send: refusing to use socket "${result.socket}": ${WHY}`], [url]));
});

test("send.ts --status with permission denied on the way to the socket: exit 77, saying why", { timeout: 60_000 }, async (t) => {
  const result = await asOtherUser(t, "send.ts", ["--status"]);
  if (!result) return;
  assert.equal(result.code, 77);
  assert.equal(result.stderr, `send: no desktop is connected on this host: refusing to use socket "${result.socket}": ${WHY}`);
});

test("client.ts with permission denied on the way to the socket: exit 77, saying why", { timeout: 60_000 }, async (t) => {
  const result = await asOtherUser(t, "client.ts", []);
  if (!result) return;
  assert.equal(result.code, 77);
  assert.equal(result.stderr, `client: refusing to use socket "${result.socket}": ${WHY}`);
});
