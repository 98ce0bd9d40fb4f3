#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s")
":" //; command -v deno >/dev/null && exec deno run --no-prompt --allow-run --allow-read --allow-env --allow-sys "$s" "$@"
":" //; command -v bun >/dev/null && exec bun "$s" -- "$@"
":" //; case $(node --version 2>/dev/null) in v2[4-9]*|v[3-9]?.*|v23.[6-9]*|v23.[1-9]?.*|v22.1[89]*|v22.[2-9]?.*) export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/urlserver}"; exec node --disable-warning=ExperimentalWarning "$s" "$@";; esac
":" //; command -v tsx >/dev/null && exec tsx "$s" "$@"
":" //; command -v npx >/dev/null && exec npx --yes tsx "$s" "$@"
":" //; echo "server.ts: no runtime found: needs Deno 2, Bun 1, Node 22.18+, or Node 20+ with tsx or npx" >&2; exit 69
// server.ts: the desktop end of urlserver. It runs `ssh HOST` with client.ts
// as the remote command and opens every URL the client forwards with this
// desktop's opener, until the connection ends.
//
//   ./server.ts HOST                             the first runtime found (above)
//   npx tsx server.ts HOST                       Node 20+ with tsx
//   node server.ts HOST                          Node 22.18+ (type stripping)
//   deno run --allow-run --allow-read --allow-env --allow-sys server.ts HOST
//   bun server.ts HOST
//
// Exit codes: 64 usage, 69 the client or the connection went away,
// 70 internal error, 76 protocol mismatch, 128+N ended by signal N
// (130 Ctrl-C, 143 TERM, 129 HUP, 141 stderr closed).

import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import { release } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const PROGRAM = "server";
const USAGE = `Usage: server.ts [options] HOST

Run client.ts on HOST over ssh and open here every URL sent there with
send.ts. Runs until the connection ends; Ctrl-C ends it.

Options:
  --ssh PROGRAM          ssh program, run as PROGRAM [ssh options] -- HOST CMD
                         ($URLSERVER_SSH, else ssh)
  --remote-command CMD   command that starts the client on HOST
                         ($URLSERVER_REMOTE_COMMAND, else "exec sh client.ts":
                         ~/client.ts with the first of Deno, Bun, Node 22.18+
                         or npx tsx found on HOST)
  --browser PROGRAM      opener, run with the URL as its last argument
                         ($URLSERVER_BROWSER, else xdg-open; open on macOS;
                         rundll32 url.dll,FileProtocolHandler on Windows and WSL)
  --keepalive SECONDS    heartbeat interval; each end gives up after three
                         silent intervals (15)
  --allow-scheme SCHEME  also open URLs with this scheme, such as mailto;
                         repeatable (http and https are always allowed)
  --rate PER_SECOND      steady rate of opens once the burst is spent (1);
                         0 turns rate limiting off
  --burst N              opens allowed in a burst (10)
  --local                run client.ts from beside this script on this
                         machine, without ssh
  -h, --help             show this help

Exit codes: 64 usage, 69 the client or the connection went away, 70 internal
error, 76 protocol mismatch, 128+N ended by signal N (130 Ctrl-C, 143 TERM,
129 HUP, 141 stderr closed)
`;

// BEGIN exit stanza: identical in server.ts, client.ts and send.ts (test/stanza.test.ts)
// Every way out runs the cleanups first: a signal, a closed stdout or stderr, a crash.
const cleanups: Array<() => void> = [];
function exitNow(code: number): never {
  for (const cleanup of cleanups.splice(0).reverse()) {
    try { cleanup(); } catch { /* exiting anyway */ }
  }
  process.exit(code);
}
for (const [signal, number] of [["SIGHUP", 1], ["SIGINT", 2], ["SIGTERM", 15]] as const) {
  process.on(signal, () => exitNow(128 + number));
}
// Node reports a vanished reader as EPIPE rather than dying of SIGPIPE: end as if it had.
process.stdout.on("error", () => exitNow(128 + 13));
process.stderr.on("error", () => exitNow(128 + 13));
function crash(error: unknown): never {
  process.stderr.write(`${PROGRAM}: internal error: ${error instanceof Error ? error.message : error}\n`);
  return exitNow(70);
}
process.on("uncaughtException", crash);
process.on("unhandledRejection", crash);
// END exit stanza

const PROTOCOL = "urlserver/1";
const MAX_URL_BYTES = 8192;
// Room for "open ID " before a longest URL; anything longer is not from a client.
const MAX_CHANNEL_LINE_BYTES = MAX_URL_BYTES + 64;
const LINE_HEAD_BYTES = 32;
// client.ts's first lines pick the runtime; sh runs them whatever the login
// shell (fish, csh) and whether or not scp kept the executable bit.
const DEFAULT_REMOTE_COMMAND = "exec sh client.ts";

type Options = {
  host: string;
  ssh: string;
  remoteCommand?: string;
  browser: string[];
  keepaliveSeconds: number;
  schemes: Set<string>;
  rate: number;
  burst: number;
  local: boolean;
};

async function main(argv: string[]): Promise<number> {
  let options: Options;
  try {
    const parsed = parseOptions(argv);
    if (parsed === "help") {
      process.stdout.write(USAGE);
      return 0;
    }
    options = parsed;
  } catch (error) {
    process.stderr.write(`${PROGRAM}: ${(error as Error).message.split("\n")[0]}\nRun "server.ts --help" for usage.\n`);
    return 64;
  }
  const connection = startConnection(options);
  if (typeof connection === "string") {
    log(options.host, connection);
    return 69;
  }
  cleanups.push(() => connection.kill("SIGTERM"));
  return serveConnection(connection, options);
}

function parseOptions(argv: string[]): Options | "help" {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: {
      ssh: { type: "string" },
      "remote-command": { type: "string" },
      browser: { type: "string" },
      keepalive: { type: "string", default: "15" },
      "allow-scheme": { type: "string", multiple: true, default: [] },
      rate: { type: "string", default: "1" },
      burst: { type: "string", default: "10" },
      local: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  if (positionals.length !== 1) throw new Error(positionals.length ? "expected one HOST" : "missing HOST");
  const host = positionals[0];
  // ssh would read it as an option, whatever "--" says about the rest.
  if (host.startsWith("-") || host === "") throw new Error(`refusing HOST "${host}": it would be read as an ssh option`);
  const env = process.env;
  const browser = values.browser ?? env.URLSERVER_BROWSER;
  return {
    host,
    ssh: values.ssh ?? env.URLSERVER_SSH ?? "ssh",
    remoteCommand: values["remote-command"] ?? env.URLSERVER_REMOTE_COMMAND,
    browser: browser ? [browser] : defaultOpener(),
    keepaliveSeconds: positiveNumber("--keepalive", values.keepalive, false),
    schemes: new Set(["http", "https", ...values["allow-scheme"].map(checkedScheme)]),
    rate: positiveNumber("--rate", values.rate, true),
    burst: Math.max(1, Math.floor(positiveNumber("--burst", values.burst, false))),
    local: values.local,
  };
}

function positiveNumber(option: string, text: string, zeroAllowed: boolean): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < 0 || (value === 0 && !zeroAllowed)) {
    throw new Error(`${option} needs a ${zeroAllowed ? "non-negative" : "positive"} number, not "${text}"`);
  }
  return value;
}

function checkedScheme(text: string): string {
  const scheme = text.toLowerCase().replace(/:$/, "");
  if (!/^[a-z][a-z0-9+.-]*$/.test(scheme)) throw new Error(`--allow-scheme: "${text}" is not a URL scheme`);
  if (["javascript", "file", "data", "vbscript", "blob"].includes(scheme)) {
    throw new Error(`--allow-scheme: "${scheme}" can run code or read local files, and is never allowed`);
  }
  return scheme;
}

function defaultOpener(): string[] {
  if (process.platform === "darwin") return ["open"];
  // No shell on the way: cmd's "start" would interpret & and ^ in URLs.
  if (process.platform === "win32") return ["rundll32", "url.dll,FileProtocolHandler"];
  if (/microsoft/i.test(release()) || process.env.WSL_DISTRO_NAME) return ["rundll32.exe", "url.dll,FileProtocolHandler"];
  return ["xdg-open"];
}

// The child whose stdin and stdout are the channel: ssh, or the client itself.
function startConnection(options: Options): ChildProcessWithoutNullStreams | string {
  let command: string;
  let args: string[];
  if (options.local) {
    const clientPath = join(dirname(fileURLToPath(import.meta.url)), "client.ts");
    if (options.remoteCommand) {
      [command, args] = ["sh", ["-c", options.remoteCommand]];
    } else if (existsSync(clientPath)) {
      [command, args] = [process.execPath, [...localRuntimeFlags(), clientPath]];
    } else {
      return `cannot start the local client: "${clientPath}" not found (--local needs client.ts beside server.ts)`;
    }
  } else {
    const alive = Math.max(1, Math.ceil(options.keepaliveSeconds));
    command = options.ssh;
    args = ["-T", "-o", `ServerAliveInterval=${alive}`, "-o", "ServerAliveCountMax=3",
      "--", options.host, options.remoteCommand ?? DEFAULT_REMOTE_COMMAND];
  }
  return spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
}

// The runtime that runs this script runs the local client: with the same
// loader flags (tsx), or with the client's own permissions under Deno.
function localRuntimeFlags(): string[] {
  if (!(process.versions as Record<string, string | undefined>).deno) return process.execArgv;
  return ["run", "--no-prompt", "--allow-read", "--allow-write", "--allow-net",
    "--allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR", "--allow-sys"];
}

// Resolves with the exit code once the connection has ended, by whichever sign comes first.
function serveConnection(child: ChildProcessWithoutNullStreams, options: Options): Promise<number> {
  const { host } = options;
  return new Promise((resolve) => {
    let ended = false;
    const end = (code: number, why: string) => {
      if (ended) return;
      ended = true;
      log(host, `disconnected: ${why}`);
      resolve(code);
    };
    child.on("error", (error) => end(69, `cannot run "${options.local ? "client" : options.ssh}": ${error.message}`));
    child.on("exit", (code, signal) => end(69, `${options.local ? "the client" : "ssh"} exited with ${signal ?? `status ${code}`}`));
    child.stdout.on("end", () => end(69, "the client's output ended (client or connection gone)"));
    child.stdin.on("error", () => { /* the exit or end above reports it */ });
    // The remote side's own messages, made safe for the terminal.
    createInterface({ input: child.stderr, crlfDelay: Infinity }).on("line", (line) => log(host, `remote: ${printable(line)}`));

    const session = sessionState(options, child, end);
    readChannelLines(child.stdout, session.onLine);
    child.stdin.write(`hello ${PROTOCOL} keepalive=${options.keepaliveSeconds} schemes=${[...options.schemes].join(",")}\n`);
  });
}

// Splits the channel into lines without ever holding more than one bounded
// line: of a longer one only the start is kept, enough to answer it.
function readChannelLines(stream: Readable, onLine: (line: string, problem?: string) => void): void {
  let buffered: Buffer = Buffer.alloc(0);
  let dropped = 0;
  stream.on("data", (chunk: Buffer) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    let newline;
    while ((newline = buffered.indexOf(10)) !== -1) {
      const line = buffered.subarray(0, newline);
      buffered = buffered.subarray(newline + 1);
      const length = dropped + line.length;
      dropped = 0;
      if (length > MAX_CHANNEL_LINE_BYTES) onLine(line.subarray(0, LINE_HEAD_BYTES).toString(), `a ${length}-byte line is too long`);
      else decodeLine(line, onLine);
    }
    if (buffered.length > MAX_CHANNEL_LINE_BYTES) {
      dropped += buffered.length - LINE_HEAD_BYTES;
      buffered = Buffer.from(buffered.subarray(0, LINE_HEAD_BYTES));
    }
  });
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

// Invalid UTF-8 would reach the opener altered (as U+FFFD), so it is refused.
function decodeLine(line: Buffer, onLine: (line: string, problem?: string) => void): void {
  let text;
  try {
    text = strictUtf8.decode(line);
  } catch {
    return onLine(line.toString(), "line is not valid UTF-8");
  }
  onLine(text.replace(/\r$/, ""));
}

function sessionState(options: Options, child: ChildProcessWithoutNullStreams, end: (code: number, why: string) => void) {
  const { host, keepaliveSeconds } = options;
  const send = (line: string) => child.stdin.write(`${line}\n`);
  const takeToken = rateLimiter(options.rate, options.burst);
  let greeted = false;
  let silenceTimer: ReturnType<typeof setTimeout> | undefined;
  const heard = () => {
    clearTimeout(silenceTimer);
    silenceTimer = setTimeout(() => end(69, `no word from the client for ${3 * keepaliveSeconds} s: connection lost`),
      3 * keepaliveSeconds * 1000);
  };
  setInterval(() => send("ping"), keepaliveSeconds * 1000);

  const onLine = (line: string, problem?: string) => {
    const [verb, id, ...rest] = line.split(" ");
    if (!greeted) {
      if (verb !== "hello" || problem) return log(host, `remote: ${printable(line)}${problem ? ` (${problem})` : ""}`);
      if (id !== PROTOCOL) {
        return end(76, `the client speaks "${printable(id ?? "")}", this server speaks "${PROTOCOL}": copy this client.ts to ${host}`);
      }
      greeted = true;
      heard();
      const fields = new URLSearchParams(rest.join("&"));
      return log(host, `connected: client pid ${printable(fields.get("pid") ?? "?")} on ${printable(fields.get("runtime") ?? "unknown runtime")}, socket "${printable(fields.get("socket") ?? "?")}"`);
    }
    heard();
    if (verb === "open" && /^[0-9]{1,15}$/.test(id ?? "") && (rest.length > 0 || problem)) {
      const answer = (refusal?: string) => send(refusal === undefined ? `ok ${id}` : `error ${id} ${refusal}`);
      if (!problem) return openRequested(rest.join(" "), answer);
      log(host, `refused URL ${id}: ${problem}`);
      answer(problem.endsWith("too long") ? `URL longer than ${MAX_URL_BYTES} bytes` : problem);
    } else if (verb !== "pong" || problem) {
      log(host, `ignoring a message the client should not send: ${printable(line.slice(0, 200))}${problem ? ` (${problem})` : ""}`);
    }
  };

  // answer() with no reason means opened.
  const openRequested = (url: string, answer: (refusal?: string) => void) => {
    const refusal = refusalReason(url, options.schemes);
    if (refusal) {
      log(host, `refused ${JSON.stringify(url.slice(0, 200))}: ${refusal}`);
      return answer(refusal);
    }
    if (!takeToken()) {
      log(host, `refused ${JSON.stringify(url)}: rate limited`);
      return answer("rate limited");
    }
    openUrl(options.browser, url, host, answer);
  };
  return { onLine };
}

// The server trusts nothing from the remote host: every check is made here again.
function refusalReason(url: string, schemes: Set<string>): string | undefined {
  if (Buffer.byteLength(url) > MAX_URL_BYTES) return `URL longer than ${MAX_URL_BYTES} bytes`;
  if (/[\p{Cc}\p{Cf}\s]/u.test(url)) return "URL contains whitespace or control characters";
  // An opener must never read the URL as one of its options.
  if (url.startsWith("-")) return `URL starts with "-"`;
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return "not a URL";
  }
  const scheme = parsed.protocol.slice(0, -1);
  if (!schemes.has(scheme)) return `scheme "${scheme}" is not allowed`;
  return undefined;
}

// A token bucket: a burst at once, then a steady rate; rate 0 means no limit.
function rateLimiter(perSecond: number, burst: number): () => boolean {
  let tokens = burst;
  let last = Date.now();
  return () => {
    if (perSecond === 0) return true;
    const now = Date.now();
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * perSecond);
    last = now;
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  };
}

// The opener gets the URL byte for byte as its last argument, with no shell.
// It is detached with its output ignored: some openers live as long as the
// browser, and Ctrl-C here must not reach the browser. The URL counts as
// opened once the opener has started.
function openUrl(opener: string[], url: string, host: string, answer: (refusal?: string) => void): void {
  const [program, ...args] = opener;
  const child = spawn(program, [...args, url], { detached: true, stdio: "ignore" });
  child.on("spawn", () => {
    log(host, `opened ${JSON.stringify(url)} with ${program} (pid ${child.pid})`);
    answer();
  });
  child.on("error", (error) => {
    log(host, `cannot open ${JSON.stringify(url)}: cannot run "${program}": ${error.message}`);
    answer(`the desktop cannot run its opener "${program}"`);
  });
  child.on("exit", (code, signal) => {
    log(host, `${program} (pid ${child.pid}) exited with ${signal ?? `status ${code}`}`);
  });
  child.unref();
}

function printable(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}

function log(host: string, message: string): void {
  process.stderr.write(`${new Date().toISOString()} ${host}: ${message}\n`);
}

main(process.argv.slice(2)).then(exitNow, crash);
