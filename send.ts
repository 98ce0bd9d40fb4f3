#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s")
":" //; command -v deno >/dev/null && exec deno run --no-prompt --allow-read --allow-write --allow-net --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR --allow-sys=uid "$s" "$@"
":" //; command -v bun >/dev/null && exec bun "$s" -- "$@"
":" //; case $(node --version 2>/dev/null) in v2[4-9]*|v[3-9]?.*|v23.[6-9]*|v23.[1-9]?.*|v22.1[89]*|v22.[2-9]?.*) export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/urlserver}"; exec node --disable-warning=ExperimentalWarning "$s" "$@";; esac
":" //; command -v tsx >/dev/null && exec tsx "$s" "$@"
":" //; command -v npx >/dev/null && exec npx --yes tsx "$s" "$@"
":" //; echo "send.ts: no runtime found: needs Deno 2, Bun 1, Node 22.18+, or Node 20+ with tsx or npx" >&2; exit 69
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
// Exit codes: 0 every URL opened, 64 usage, 65 a URL was refused by the
// desktop, 69 no server is connected on this host (or it went away),
// 70 internal error, 75 timed out, 128+N ended by signal N.

import { connect } from "node:net";
import { parseArgs } from "node:util";

const PROGRAM = "send";
const USAGE = `Usage: send.ts [--socket PATH] [--timeout SECONDS] URL...

Open each URL in the browser on the desktop that runs server.ts for this host.
Exits 0 once the desktop has started its opener for every URL.

Options:
  --socket PATH       the client's socket ($URLSERVER_SOCKET, else
                      $XDG_RUNTIME_DIR/urlserver.sock, else /tmp/urlserver-UID/sock)
  --timeout SECONDS   give up waiting for the desktop after this long (10)
  -h, --help          show this help
  --                  end of options: what follows is a URL even if it starts with -

Exit codes: 0 all opened, 64 usage, 65 a URL was refused by the desktop,
69 no server connected on this host, 70 internal error, 75 timed out,
128+N ended by signal N
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

async function main(argv: string[]): Promise<number> {
  let socketPath: string;
  let timeoutSeconds: number;
  let urls: string[];
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        socket: { type: "string" },
        timeout: { type: "string", default: "10" },
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    timeoutSeconds = Number(values.timeout);
    if (!(timeoutSeconds > 0)) throw new Error(`--timeout needs a positive number of seconds, not "${values.timeout}"`);
    if (positionals.length === 0) throw new Error("missing URL");
    socketPath = values.socket || process.env.URLSERVER_SOCKET ||
      (process.env.XDG_RUNTIME_DIR ? `${process.env.XDG_RUNTIME_DIR}/urlserver.sock` : `/tmp/urlserver-${process.getuid?.() ?? 0}/sock`);
    urls = positionals;
  } catch (error) {
    process.stderr.write(`${PROGRAM}: ${(error as Error).message.split("\n")[0]}\nRun "send.ts --help" for usage.\n`);
    return 64;
  }
  return deliver(socketPath, urls, timeoutSeconds);
}

// Writes every URL, half-closes, then reads one answer per URL, in order.
function deliver(socketPath: string, urls: string[], timeoutSeconds: number): Promise<number> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    let connected = false;
    let answered = 0;
    let exitCode = 0;
    let buffered = "";
    let finished = false;
    const finish = (code: number, message?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (message) process.stderr.write(`${PROGRAM}: ${message}\n`);
      socket.destroy();
      resolve(code);
    };
    const timer = setTimeout(() => {
      finish(75, `timed out after ${timeoutSeconds} s waiting for the desktop to open ${JSON.stringify(urls[answered])}`);
    }, timeoutSeconds * 1000);

    socket.on("connect", () => {
      connected = true;
      socket.end(urls.map((url) => `${url}\n`).join(""));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (connected) return finish(69, `lost the connection to "${socketPath}": ${error.message}`);
      const noServer = error.code === "ENOENT" || error.code === "ECONNREFUSED";
      finish(69, `cannot connect to "${socketPath}": ${noServer ? "no server is connected on this host" : error.message}`);
    });
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf("\n")) !== -1 && answered < urls.length) {
        const answer = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (answer !== "ok") {
          process.stderr.write(`${PROGRAM}: refused ${JSON.stringify(urls[answered])}: ${answer.replace(/^error ?/, "")}\n`);
          exitCode = 65;
        }
        answered += 1;
      }
      if (answered === urls.length) finish(exitCode);
    });
    socket.on("end", () => {
      if (answered === urls.length) return;
      // After a refusal of an overlong or idle line the client stops reading.
      const why = exitCode === 65 ? "the client closed the connection after the refusal above" : "the server went away";
      finish(exitCode || 69, `no answer for ${JSON.stringify(urls[answered])}: ${why}`);
    });
  });
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, crash);
