// Ensures server.ts --service writes a service that runs this server, with
// --reconnect and the options given, by absolute paths that exist: a systemd
// user unit that systemd-analyze verify accepts, and (by the platform given
// to the pure function, there being no macOS here) a launchd agent that
// parses as a property list; that it replaces and --remove removes only its
// own file. Needs systemd-analyze (Debian: systemd) and python3's plistlib:
// skipped without them, failing in CI.

import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { FAKE_BROWSER, ROOT, needs, run, tempDir } from "./helpers.ts";
import { serviceDefinition } from "../server.ts";
import type { Service } from "../server.ts";

const UNIT = ".config/systemd/user/urlserver.service";

function onPath(program: string): boolean {
  return (process.env.PATH ?? "").split(":").some((dir) => existsSync(join(dir, program)));
}

/** The words of an ExecStart= line, as systemd reads "..." quoted words. */
function execStart(unit: string): string[] {
  const line = unit.split("\n").find((l) => l.startsWith("ExecStart="))!.slice("ExecStart=".length);
  return [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1].replace(/\\(.)/g, "$1").replaceAll("%%", "%").replaceAll("$$", "$"));
}

test("--service writes a systemd user unit that runs this server by absolute paths with --reconnect and the options; systemd-analyze verify accepts it", { timeout: 30_000 }, async (t) => {
  if (!needs(t, onPath("systemd-analyze") ? undefined : "systemd-analyze (Debian: systemd)")) return;
  const home = tempDir(t);
  // As the Quick start runs it: Node with tsx, whose loader the unit must name too.
  const result = await run(t, "server.ts", ["--service", "--log", "urls.log", "--browser", FAKE_BROWSER, "--keepalive=20", "build1", "build2"],
    { env: { HOME: home }, tsx: true });
  assert.equal(result.code, 0, result.stderr);
  const path = join(home, UNIT);
  assert.deepEqual(result.stdout.split("\n"), [
    `wrote "${path}": server.ts --reconnect --log ${join(ROOT, "urls.log")} --browser ${FAKE_BROWSER} --keepalive 20 build1 build2, with the desktop session, restarted on failure`,
    "start it now and at every login: systemctl --user daemon-reload && systemctl --user enable urlserver.service && systemctl --user restart urlserver.service",
    "see its log: journalctl --user -u urlserver.service -f",
  ]);
  const unit = readFileSync(path, "utf8");
  const words = execStart(unit);
  assert.equal(words[0], process.execPath);
  // Every path in the command is absolute and exists: the runtime, its loader (tsx), server.ts.
  const paths = words.filter((word) => word.startsWith("/") && !word.endsWith("urls.log"));
  assert.ok(paths.length >= 3, words.join(" "));
  for (const word of paths) assert.ok(existsSync(word), `${word} does not exist`);
  assert.ok(words.includes(join(ROOT, "server.ts")), words.join(" "));
  assert.deepEqual(words.slice(words.indexOf(join(ROOT, "server.ts")) + 1),
    ["--reconnect", "--log", join(ROOT, "urls.log"), "--browser", FAKE_BROWSER, "--keepalive", "20", "build1", "build2"]);
  assert.match(unit, /^Restart=on-failure$/m);
  assert.match(unit, /^WantedBy=graphical-session\.target$/m);
  assert.match(unit, /^PartOf=graphical-session\.target$/m);
  const verify = spawnSync("systemd-analyze", ["verify", path], { encoding: "utf8" });
  assert.equal(verify.status, 0, verify.stderr);
  assert.equal(verify.stderr, "");
});

test("--service replaces its own unit, never another file; --service --remove removes its own and the enable link, and only those", { timeout: 30_000 }, async (t) => {
  const home = tempDir(t);
  const path = join(home, UNIT);
  assert.equal((await run(t, "server.ts", ["--service", "build1"], { env: { HOME: home } })).code, 0);
  const again = await run(t, "server.ts", ["--service", "--rate", "2", "build1"], { env: { HOME: home } });
  assert.equal(again.code, 0, again.stderr);
  assert.ok(execStart(readFileSync(path, "utf8")).includes("--rate"));
  // What "systemctl --user enable" makes.
  const link = join(home, ".config/systemd/user/graphical-session.target.wants/urlserver.service");
  mkdirSync(join(link, ".."), { recursive: true });
  symlinkSync(path, link);

  const removed = await run(t, "server.ts", ["--service", "--remove"], { env: { HOME: home } });
  assert.equal(removed.code, 0, removed.stderr);
  assert.deepEqual(removed.stdout.split("\n"), [`removed "${path}"`,
    "stop the one running now: systemctl --user stop urlserver.service; systemctl --user daemon-reload"]);
  assert.equal(existsSync(path), false);
  assert.equal(existsSync(link) || spawnSync("test", ["-L", link]).status === 0, false, "the enable link is left");
  const nothing = await run(t, "server.ts", ["--service", "--remove"], { env: { HOME: home } });
  assert.equal(nothing.code, 0);
  assert.equal(nothing.stdout, `no service to remove: "${path}" does not exist`);

  // A unit of the user's own by that name is theirs.
  writeFileSync(path, "[Service]\nExecStart=/usr/bin/true\n");
  for (const args of [["--service", "build1"], ["--service", "--remove"]]) {
    const refused = await run(t, "server.ts", args, { env: { HOME: home } });
    assert.equal(refused.code, 73);
    assert.equal(refused.stderr, `server: will not ${args[1] === "--remove" ? "remove" : "replace"} "${path}": server.ts --service did not write it`);
    assert.equal(readFileSync(path, "utf8"), "[Service]\nExecStart=/usr/bin/true\n");
  }
});

test("--service --remove with a HOST, or --remove alone, is a usage error", { timeout: 20_000 }, async (t) => {
  for (const [args, message] of [[["--service", "--remove", "build1"], "--service --remove takes no HOST"],
    [["--remove"], "--remove goes with --service: server.ts --service --remove"]] as const) {
    const result = await run(t, "server.ts", [...args]);
    assert.equal(result.code, 64);
    assert.equal(result.stderr, `server: ${message}\nRun "server.ts --help" for usage.`);
  }
});

test("on macOS, a launchd agent that parses as a property list: the command, RunAtLoad, KeepAlive on failure, the GUI session, its log", { timeout: 20_000 }, (t) => {
  if (!needs(t, onPath("python3") ? undefined : "python3 (for plistlib)")) return;
  const home = tempDir(t);
  const command = [process.execPath, join(ROOT, "server.ts"), "--reconnect", "--allow-scheme", "mailto", "build&1<x>"];
  const service = serviceDefinition({ platform: "darwin", home, uid: 501, command, hosts: ["build&1<x>"],
    env: { PATH: "/opt/homebrew/bin:/usr/bin", URLSERVER_SSH: "/opt/a & b/ssh" } }) as Service;
  assert.equal(service.path, join(home, "Library/LaunchAgents/local.urlserver.plist"));
  assert.equal(service.start, `launchctl bootout gui/501/local.urlserver 2>/dev/null; launchctl bootstrap gui/501 ${service.path}`);
  assert.equal(service.log, `tail -f ${join(home, "Library/Logs/urlserver.log")}`);
  const file = join(home, "agent.plist");
  writeFileSync(file, service.text);
  const parsed = JSON.parse(execFileSync("python3", ["-c", "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))", file],
    { encoding: "utf8" }));
  assert.deepEqual(parsed, {
    Label: "local.urlserver",
    ProgramArguments: command,
    EnvironmentVariables: { PATH: "/opt/homebrew/bin:/usr/bin", URLSERVER_SSH: "/opt/a & b/ssh" },
    LimitLoadToSessionType: "Aqua",
    RunAtLoad: true,
    KeepAlive: { SuccessfulExit: false },
    StandardErrorPath: join(home, "Library/Logs/urlserver.log"),
  });
  for (const path of command.slice(0, 2)) assert.ok(existsSync(path), path);
});

test("on Windows, --service says what to do instead", { timeout: 5000 }, () => {
  assert.match(serviceDefinition({ platform: "win32", home: "C:\\Users\\me", uid: 0, command: [], hosts: [], env: {} }) as string, /Startup folder/);
});
