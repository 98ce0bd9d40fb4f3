#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s")
":" //; command -v deno >/dev/null && exec deno run --no-prompt --allow-read --allow-write --allow-net --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR --allow-sys=uid "$s" "$@"
":" //; command -v bun >/dev/null && exec bun "$s" -- "$@"
":" //; v=$(node --version 2>/dev/null); w="--disable-warning=ExperimentalWarning --disable-warning=MODULE_TYPELESS_PACKAGE_JSON"
":" //; export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/urlserver}"
":" //; case $v in v2[4-9]*|v[3-9]?.*|v23.[6-9]*|v23.[1-9]?.*|v22.1[89]*|v22.[2-9]?.*) exec node $w "$s" "$@";; esac
":" //; case $v in v23.*|v22.[6-9].*|v22.1?.*) exec node $w --experimental-strip-types "$s" "$@";; esac
":" //; [ "$v" ] && for t in "$(command -v tsx)" "$HOME/.local/bin/tsx" "$HOME"/.npm/_npx/*/node_modules/.bin/tsx; do
":" //;   t=$(readlink -f "$t") && [ -f "${t%/*}/loader.mjs" ] && exec node --import "${t%/*}/loader.mjs" "$s" "$@"; done
":" //; command -v npx >/dev/null && exec npx --yes tsx "$s" "$@"
":" //; echo "send.ts: no runtime found: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx" >&2; exit 69
// send.ts: hands URLs to the urlserver client on this host, to be opened in
// the browser on the desktop, and waits until the desktop has opened them.
// Meant to be $BROWSER on the remote host.
//
//   ./send.ts URL...                             the first runtime found (above)
//   npx tsx send.ts URL...                       Node 20+ with tsx
//   node send.ts URL...                          Node 22.18+ (type stripping)
//   deno run --allow-read --allow-write --allow-net \
//     --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR --allow-sys=uid send.ts URL...
//   bun send.ts URL...           (Bun drops a "--" right after the script name)
//
// Exit codes: 0 every URL opened (--status: a desktop is connected), 64 usage,
// 65 a URL was refused (by the desktop, or here: one argument is one URL),
// 69 no server is connected on this host (or it went away), 70 internal
// error, 75 timed out, 77 the socket is not the user's own, 128+N signal N.

import { lstatSync } from "node:fs";
import { connect } from "node:net";
import { parseArgs } from "node:util";

const PROGRAM = "send";
const USAGE = `Usage: send.ts [--socket PATH] [--timeout SECONDS] URL...
       send.ts --status

Open each URL in the browser on the desktop that runs server.ts for this host.
Exits 0 once the desktop has opened every URL; otherwise says
why and prints each URL not opened on stderr, to be copied by hand.

Options:
  --socket PATH       the client's socket (default: $URLSERVER_SOCKET, else
                      $XDG_RUNTIME_DIR/urlserver.sock, else /tmp/urlserver-UID/sock)
  --timeout SECONDS   give up waiting for the desktop after this long (default: 10)
  --status            say whether a desktop is connected on this host, and since when
  -h, --help          show this help
  --version           print the version and the runtime running this
  --                  end of options: what follows is a URL even if it starts with -

Environment: URLSERVER_SOCKET, XDG_RUNTIME_DIR as above.

Examples:
  export BROWSER=~/send.ts                 programs that honour $BROWSER use it
  ln -s ~/send.ts ~/bin/xdg-open           and those that call xdg-open
  send.ts --status || echo "no desktop"    in a prompt or a script

Exit codes: 0 all opened (or, with --status, a desktop is connected), 64 usage,
65 a URL was refused, 69 no server connected on this host, 70 internal error,
75 timed out, 77 the socket or its directory is not the user's own (nothing
was sent), 128+N ended by signal N
`;

// BEGIN exit stanza: identical in server.ts, client.ts and send.ts (test/stanza.test.ts)
// The release, kept here so that the three copies and package.json must agree.
const VERSION = "0.3.0";
// The runtime the first lines picked, and how it reads TypeScript: --version
// says it (server.ts --install reports it from each host), so does the hello.
function runtimeName(): string {
  const versions = process.versions as Record<string, string | undefined>;
  if (versions.deno) return `deno/${versions.deno}`;
  if (versions.bun) return `bun/${versions.bun}`;
  const flags = process.execArgv.join(" ");
  const how = process.env.npm_lifecycle_event === "npx" ? " through npx tsx"
    : flags.includes("tsx") ? " with tsx"
    : flags.includes("--experimental-strip-types") ? " with --experimental-strip-types" : "";
  return `node/${versions.node}${how}`;
}
// Every way out runs the cleanups first, told the signal if that is the way:
// a signal, a closed stdout or stderr, a crash.
const cleanups: Array<(signal?: string) => void> = [];
function exitNow(code: number, signal?: string): never {
  for (const cleanup of cleanups.splice(0).reverse()) {
    try { cleanup(signal); } catch { /* exiting anyway */ }
  }
  process.exit(code);
}
for (const [signal, number] of [["SIGHUP", 1], ["SIGINT", 2], ["SIGQUIT", 3], ["SIGTERM", 15]] as const) {
  process.on(signal, () => exitNow(128 + number, signal));
}
// Node reports a vanished reader of stdout or stderr as an unhandled EPIPE
// rather than dying of SIGPIPE: end as if it had. (No error listener on them:
// Bun would create both streams at start for it, 4 ms of every send.ts.)
function crash(error: unknown): never {
  if ((error as NodeJS.ErrnoException | undefined)?.code === "EPIPE") return exitNow(128 + 13);
  process.stderr.write(`${PROGRAM}: internal error: ${error instanceof Error ? error.message : error}\n`);
  return exitNow(70);
}
process.on("uncaughtException", crash);
process.on("unhandledRejection", crash);
// END exit stanza

async function main(argv: string[]): Promise<number> {
  let socketPath: string;
  let timeoutSeconds: number;
  let urls: string[];
  let status: boolean;
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        socket: { type: "string" },
        timeout: { type: "string", default: "10" },
        status: { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
      },
    });
    if (values.help || values.version) {
      process.stdout.write(values.help ? USAGE : `${PROGRAM}.ts ${VERSION} on ${runtimeName()}\n`);
      return 0;
    }
    timeoutSeconds = Number(values.timeout);
    if (!(timeoutSeconds > 0)) throw new Error(`--timeout needs a positive number of seconds, not "${values.timeout}"`);
    status = values.status;
    if (status && positionals.length > 0) throw new Error("--status takes no URL");
    if (!status && positionals.length === 0) throw new Error("missing URL");
    socketPath = values.socket || process.env.URLSERVER_SOCKET ||
      (process.env.XDG_RUNTIME_DIR ? `${process.env.XDG_RUNTIME_DIR}/urlserver.sock` : `/tmp/urlserver-${process.getuid?.() ?? 0}/sock`);
    urls = positionals;
  } catch (error) {
    process.stderr.write(`${PROGRAM}: ${(error as Error).message.split("\n")[0]}\nRun "send.ts --help" for usage.\n`);
    return 64;
  }
  const refusal = socketRefusal(socketPath);
  if (status) {
    if (refusal) return report(`no desktop is connected on this host: ${refusal.message}`, refusal.code);
    return reportStatus(await exchange(socketPath, ["status"], timeoutSeconds), socketPath);
  }
  // One argument is one URL: one that is not is refused here, never sent.
  const answers = urls.map(notOneUrl);
  const sent = urls.flatMap((url, i) => answers[i] === undefined ? [i] : []);
  const outcome: Outcome = refusal ? { answers: [], failure: () => refusal }
    : sent.length ? await exchange(socketPath, sent.map((i) => urls[i]), timeoutSeconds) : { answers: [] };
  outcome.answers.forEach((answer, k) => { answers[sent[k]] = answer; });
  return reportDelivery(urls, answers, outcome.failure?.(quoted(urls[sent[outcome.answers.length]] ?? "")));
}

function report(message: string, code: number): number {
  process.stderr.write(`${PROGRAM}: ${message}\n`);
  return code;
}

// What sh and the kernel allow: sun_path holds 108 bytes on Linux, 104 on the
// BSDs and macOS, the final NUL included; Node would cut a longer path short.
const MAX_SOCKET_PATH_BYTES = process.platform === "linux" ? 107 : 103;

// Another user of this host must not receive our URLs: the socket must be
// ours, and /tmp/urlserver-UID (which anyone could have made first) must be
// private to us, as client.ts requires before listening there. A missing
// socket is left to connect() to report.
function socketRefusal(socketPath: string): { code: number; message: string } | undefined {
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    return { code: 64, message: `socket path "${socketPath}" is ${Buffer.byteLength(socketPath)} bytes long; this system allows at most ${MAX_SOCKET_PATH_BYTES}` };
  }
  const uid = process.getuid?.();
  if (uid === undefined) return undefined;
  const directory = `/tmp/urlserver-${uid}`;
  const refuse = (path: string, why: string) => ({ code: 77, message: `refusing to use ${path === directory ? "socket directory" : "socket"} "${path}": ${why}` });
  if (socketPath.startsWith(`${directory}/`)) {
    const info = lstatSync(directory, { throwIfNoEntry: false });
    if (info && !info.isDirectory()) return refuse(directory, "it is not a directory");
    if (info && info.uid !== uid) return refuse(directory, `it is owned by uid ${info.uid}, not ${uid}`);
    if (info && (info.mode & 0o077) !== 0) return refuse(directory, `its mode ${(info.mode & 0o777).toString(8)} lets others in`);
  }
  const info = lstatSync(socketPath, { throwIfNoEntry: false });
  if (info && !info.isSocket()) return refuse(socketPath, "it is not a socket");
  if (info && info.uid !== uid) return refuse(socketPath, `it is owned by uid ${info.uid}, not ${uid}`);
  return undefined;
}

// The socket protocol is a URL per line, and the line "status" asks for the
// status: an argument with a line break would be two URLs.
function notOneUrl(url: string): string | undefined {
  if (/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(url)) return "error it contains a line break or another control or format character: not sent";
  if (url === "status") return "error not a URL (send.ts --status asks whether a desktop is connected)";
  return undefined;
}

// The answers received, in order, and what cut the exchange short if anything did
// (noServer: nothing listens on the socket).
type Outcome = { answers: string[]; failure?: (pending: string) => { code: number; message: string; noServer?: boolean } };

// What to do when no server is connected: HOST as the desktop's ssh reaches this host.
const START_SERVER = 'on the desktop, run "server.ts HOST" with this host\'s name';

// Writes every line, half-closes, then reads one answer per line, in order.
function exchange(socketPath: string, lines: string[], timeoutSeconds: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    const answers: string[] = [];
    let connected = false;
    let buffered = "";
    let finished = false;
    const finish = (failure?: Outcome["failure"]) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ answers, failure });
    };
    const timer = setTimeout(() => finish((pending) => ({
      code: 75, message: `timed out after ${timeoutSeconds} s waiting for the desktop to open ${pending}` })), timeoutSeconds * 1000);

    socket.on("connect", () => {
      connected = true;
      socket.end(lines.map((line) => `${line}\n`).join(""));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (connected) return finish(() => ({ code: 69, message: `lost the connection to "${socketPath}": ${error.message}` }));
      const noServer = error.code === "ENOENT" || error.code === "ECONNREFUSED";
      finish(() => ({ code: 69, noServer,
        message: `cannot connect to "${socketPath}": ${noServer ? `no server is connected on this host: ${START_SERVER}` : error.message}` }));
    });
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf("\n")) !== -1 && answers.length < lines.length) {
        answers.push(buffered.slice(0, newline));
        buffered = buffered.slice(newline + 1);
      }
      if (answers.length === lines.length) finish();
    });
    socket.on("end", () => {
      // After refusing an overlong or idle line the client stops reading.
      const refusedBefore = answers.some((answer) => answer !== "ok");
      finish((pending) => refusedBefore
        ? { code: 65, message: `no answer for ${pending}: the client closed the connection after the refusal above` }
        : { code: 69, message: `no answer for ${pending}: the server went away` });
    });
  });
}

// One line per URL not opened saying why, then each such URL on a line of its
// own: nothing is lost, the user can still open it by hand.
// answers[i] is urls[i]'s answer, or undefined if it got none.
function reportDelivery(urls: string[], answers: Array<string | undefined>, failure?: { code: number; message: string }): number {
  let code = 0;
  urls.forEach((url, i) => {
    if (answers[i] !== undefined && answers[i] !== "ok") code = report(`refused ${quoted(url)}: ${printable(answers[i].replace(/^error ?/, ""))}`, 65);
  });
  if (failure) code = report(failure.message, failure.code);
  urls.forEach((url, i) => {
    if (answers[i] !== "ok") process.stderr.write(`${copyable(url)}\n`);
  });
  return code;
}

// On a terminal, an OSC 8 hyperlink; a URL with control characters is never
// written raw, so it cannot drive the terminal.
function copyable(url: string): string {
  if (printable(url) !== url) return quoted(url);
  return process.stderr.isTTY ? `\x1b]8;;${url}\x1b\\${url}\x1b]8;;\x1b\\` : url;
}

// Safe on a terminal: every control, format, line and paragraph separator
// character (C0, C1, bidi controls, U+0085, U+2028) becomes \uXXXX.
function printable(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu, (character) =>
    Array.from({ length: character.length }, (_, i) => `\\u${character.charCodeAt(i).toString(16).padStart(4, "0")}`).join(""));
}

function quoted(text: string): string {
  return printable(JSON.stringify(text));
}

function reportStatus(outcome: Outcome, socketPath: string): number {
  const [answer] = outcome.answers;
  if (answer?.startsWith("ok ")) {
    const fields = new URLSearchParams(answer.slice(3).replaceAll(" ", "&"));
    const field = (name: string) => printable(fields.get(name) ?? "?");
    process.stdout.write(`connected to desktop ${quoted(fields.get("desktop") ?? "?")} since ${field("since")}` +
      ` (client pid ${field("pid")} on ${field("runtime")})\n`);
    return 0;
  }
  const failure = answer ? undefined : outcome.failure?.("the status");
  // The reason once: "no server is connected" is what "no desktop" already says.
  const why = answer ? printable(answer.replace(/^error ?/, ""))
    : failure?.noServer ? `nothing listens on "${socketPath}": ${START_SERVER}` : failure?.message;
  return report(`no desktop is connected on this host: ${why}`, 69);
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, crash);
