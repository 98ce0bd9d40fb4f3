// Ensures that the tests' own clean-up cannot take the whole run down: a pid
// file read while it is being written yields no pid (0 would signal the test's
// process group: a CI run was SIGKILLed so), and killIfAlive refuses every pid
// that would reach the test's process group, init or the processes it runs
// under. The refusals are tried with SIGCONT, in a process group of their
// own, so that a broken guard harms nothing.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { appendFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, TSX, pidFrom, tempDir } from "./helpers.ts";

test("a pid file still empty is waited for, not read as pid 0", { timeout: 10_000 }, async (t) => {
  const path = join(tempDir(t), "fixture.pid");
  writeFileSync(path, "");
  setTimeout(() => appendFileSync(path, "4321"), 100);
  setTimeout(() => appendFileSync(path, "\n"), 200);
  assert.equal(await pidFrom(path, 5000, "the fixture"), 4321);
});

test("killIfAlive refuses pid 0, 1, -1, its own process group, itself and the process it runs under", { timeout: 30_000 }, () => {
  const script = `import("${join(ROOT, "test/helpers.ts")}").then(({ killIfAlive }) => {
    for (const [name, pid] of [["0", 0], ["1", 1], ["-1", -1], ["own group", -process.pid], ["itself", process.pid], ["parent", process.ppid]]) {
      try { killIfAlive(pid, "SIGCONT"); console.log(name + ": signalled"); } catch { console.log(name + ": refused"); }
    }
  });`;
  // detached: its own process group, so that -process.pid is that group.
  const result = spawnSync("setsid", [...TSX, "--input-type=module", "-e", script], { encoding: "utf8", timeout: 20_000 });
  assert.equal(result.status, 0, result.stderr);
  assert.deepEqual(result.stdout.trim().split("\n"),
    ["0: refused", "1: refused", "-1: refused", "own group: refused", "itself: refused", "parent: refused"]);
});
