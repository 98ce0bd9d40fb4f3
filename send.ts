#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s"); case $s in /*) ;; *) s=$PWD/$s; esac
":" //; x() { for r; do case $r in /*) [ -f "$r" ] && [ -x "$r" ] && return;; */*) ;; ?*) command -v "$r" >/dev/null && return;; esac; done; false; }
":" //; p=$HOME/.local/share/urlserver/runtime; [ -d "$p" ] && { m=; for r in /lib/ld-musl-*; do [ -e "$r" ] && m=-musl; done; p=$p/$(uname -s)-$(uname -m)$m/bin; }
":" //; x deno "$HOME/.deno/bin/deno" "$HOME/.local/bin/deno" "$p/deno" && exec "$r" run --no-prompt --no-config --allow-read --allow-write --allow-net --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR,URLSERVER_DESKTOP,SSH_CONNECTION,TMUX,TMUX_PANE,NODE_V8_COVERAGE --allow-run=tmux --allow-sys=uid "$s" "$@"
":" //; export URLSERVER_CWD="$PWD"; cd / || exit 70
":" //; x bun "$HOME/.bun/bin/bun" "$HOME/.local/bin/bun" "$p/bun" && exec "$r" "$s" -- "$@"
":" //; b=0; N=; for r in "${NVM_DIR:-$HOME/.nvm}"/versions/node/v*/bin/node; do v=${r%/bin/node}; v=${v##*/v}; M=${v%%.*}; v=${v#*.}; m=${v%.*}; v=${v#*.}
":" //;   case $m in ?) m=00$m;; ??) m=0$m;; esac; case $v in ?) v=00$v;; ??) v=0$v;; esac; [ "$M$m$v" -gt $b ] 2>/dev/null && b=$M$m$v && N=$r; done
":" //; w="--disable-warning=ExperimentalWarning --disable-warning=MODULE_TYPELESS_PACKAGE_JSON"; n=
":" //; export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/urlserver}"
":" //; for c in node "$HOME/.local/bin/node" "$N" "$HOME/.volta/bin/node" "$p/node"; do x "$c" && v=$("$r" --version 2>/dev/null) || continue; n=${n:-$r}
":" //;   case $v in v2[4-9]*|v[3-9]?.*|v23.[6-9]*|v23.[1-9]?.*|v22.1[89]*|v22.[2-9]?.*) exec "$r" $w "$s" "$@";; esac
":" //;   case $v in v23.*|v22.[6-9].*|v22.1?.*) exec "$r" $w --experimental-strip-types "$s" "$@";; esac; done
":" //; [ "$n" ] && for t in "$(command -v tsx)" "$HOME/.local/bin/tsx" "$HOME"/.npm/_npx/*/node_modules/.bin/tsx; do
":" //;   t=$(readlink -f "$t") && [ -f "${t%/*}/loader.mjs" ] && exec "$n" --import "${t%/*}/loader.mjs" "$s" "$@"; done
":" //; [ "$n" ] && x "${n%/*}/npx" npx && case $n in /*) PATH=${n%/*}:$PATH; esac && exec "$r" --yes tsx "$s" "$@"
":" //; echo "send.ts: no runtime found on PATH or in ~/.deno/bin, ~/.bun/bin, ~/.local/bin, ~/.nvm/versions/node, ~/.volta/bin, ~/.local/share/urlserver/runtime: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx; on the desktop, \"server.ts --install HOST\" brings one" >&2; LC_ALL=C; k=; e=; for a; do [ "$k" ] && k= && continue
":" //;   case $e$a in --) e=1;; --socket|--timeout) k=1;; -?*) ;; *[!\ -~]*) while [ "$a" ]; do c=${a%"${a#?}"}; a=${a#?}
":" //;     case $c in [\ -~]) printf %s "$c";; *) printf %%%02X "'$c";; esac; done; echo;; *) printf '%s\n' "$a";; esac; done >&2; exit 69
// send.ts: hands URLs to the urlserver client on this host, to be opened in
// the browser on the desktop, and waits until the desktop has opened them.
// Meant to be $BROWSER on the remote host.
//
//   ./send.ts URL...                             the first runtime found (above)
//   npx tsx send.ts URL...                       Node 20+ with tsx
//   node send.ts URL...                          Node 22.18+ (type stripping)
//   deno run --no-prompt --no-config --allow-read --allow-write --allow-net \
//     --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR,URLSERVER_DESKTOP,SSH_CONNECTION,TMUX,TMUX_PANE,NODE_V8_COVERAGE \
//     --allow-run=tmux --allow-sys=uid send.ts URL...
//   bun send.ts URL...           (Bun drops a "--" right after the script name)
// (Deno runs tmux only to ask it for SSH_CONNECTION; its child_process reads
// NODE_V8_COVERAGE.) Started those ways, npx, Node and Bun read the current
// directory (node_modules, .npmrc, package.json, bunfig.toml, .env): as
// $BROWSER, which runs in whatever repository you are in, use ./send.ts,
// whose lines above start the runtime in "/".
//
// With several desktops serving this host, each URL goes to the one this
// session came from (its SSH_CONNECTION, asked of tmux inside tmux), else to
// the newest; URLSERVER_DESKTOP=NAME picks one.
//
// Exit codes: 0 every URL opened (--status: a desktop is connected), 64 usage,
// 65 a URL was refused (by the desktop, or here: one argument is one URL),
// 69 no server is connected on this host (or it went away, or no desktop of
// the URLSERVER_DESKTOP name is connected; or the first lines found no
// runtime here, and print each URL), 70 internal error, 75 timed out, 77 the
// socket is not the user's own, or a directory on the way lets others swap
// it, or permission is denied on the way (nothing is sent), 128+N signal N.

import { execFile } from "node:child_process";
import { lstatSync, mkdirSync, readdirSync, realpathSync } from "node:fs";
import { connect } from "node:net";
import { basename, dirname, join } from "node:path";
import { parseArgs } from "node:util";

const PROGRAM = "send";
const USAGE = `Usage: send.ts [--socket PATH] [--timeout SECONDS] [--verbose] URL...
       send.ts --status

Open each URL in the browser on the desktop that runs server.ts for this host.
Exits 0 once the desktop has opened every URL; otherwise says
why and prints each URL not opened on stderr, to be copied by hand.
With several desktops serving this host: the one this session came from (by
its address in SSH_CONNECTION), else the newest.

Options:
  --socket PATH       the client's socket (default: $URLSERVER_SOCKET, else
                      $XDG_RUNTIME_DIR/urlserver.sock, else /tmp/urlserver-UID/sock)
  --timeout SECONDS   give up waiting for the desktop after this long, from 1
                      to 2147483 (default: 10); a client busy with a URL in
                      flight on each of its places is asked again meanwhile
  --status            say whether a desktop is connected on this host, and since
                      when; every desktop, with several, and which one is used
  --verbose           say which desktop opened the URLs, and when the client
                      was busy
  -h, --help          show this help
  --version           print the version, and the runtime running this and its path
  --                  end of options: what follows is a URL even if it starts with -

Environment: URLSERVER_SOCKET, XDG_RUNTIME_DIR as above; URLSERVER_DESKTOP=NAME
picks the desktop of that name; SSH_CONNECTION (from sshd, or from tmux when
TMUX is set) says which desktop this session came from.

Examples:
  export BROWSER=~/send.ts                 programs that honour $BROWSER use it
  ln -s ~/send.ts ~/bin/xdg-open           and those that call xdg-open
  send.ts --status || echo "no desktop"    in a prompt or a script

Exit codes: 0 all opened (or, with --status, a desktop is connected), 64 usage,
65 a URL was refused, 69 no server connected on this host (or no desktop named
URLSERVER_DESKTOP), 70 internal error, 75 timed out, 77 the socket or a
directory on the way is not the user's own, or permission is denied on the way
(nothing was sent), 128+N ended by signal N
`;

// BEGIN exit stanza: identical in server.ts, client.ts and send.ts (test/stanza.test.ts)
// The release, kept here so that the three copies and package.json must agree.
const VERSION = "0.4.0";
// The runtime the first lines picked, how it reads TypeScript and where it
// was found (PATH, a user's own install, the one --install provisioned):
// --version says it (server.ts --install reports it from each host), so does the hello.
function runtimeName(): string {
  const versions = process.versions as Record<string, string | undefined>;
  const from = ` from ${process.execPath}`;
  if (versions.deno) return `deno/${versions.deno}${from}`;
  if (versions.bun) return `bun/${versions.bun}${from}`;
  const flags = process.execArgv.join(" ");
  const how = process.env.npm_lifecycle_event === "npx" ? " through npx tsx"
    : flags.includes("tsx") ? " with tsx"
    : flags.includes("--experimental-strip-types") ? " with --experimental-strip-types" : "";
  return `node/${versions.node}${how}${from}`;
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
// The first lines start every runtime but Deno in "/": Bun reads bunfig.toml
// (preloads), .env and tsconfig.json (paths) from the directory it starts in,
// npx runs its node_modules/.bin/tsx, and $BROWSER runs in whatever directory
// a program stands in, a freshly cloned repository as often as not. Once
// running, back there, so that relative paths mean what the user meant.
const startedIn = (process.versions as Record<string, string | undefined>).deno ? undefined : process.env.URLSERVER_CWD;
if (startedIn !== undefined) {
  delete process.env.URLSERVER_CWD;
  try { process.chdir(startedIn); } catch { /* gone or not enterable: relative paths start at "/" */ }
}
// END exit stanza

const MAX_TIMEOUT_SECONDS = 2_147_483;

async function main(argv: string[]): Promise<number> {
  let socketPath: string;
  let timeoutSeconds: number;
  let urls: string[];
  let status: boolean;
  let verbose: boolean;
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        socket: { type: "string" },
        timeout: { type: "string", default: "10" },
        status: { type: "boolean", default: false },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
      },
    });
    if (values.help || values.version) {
      process.stdout.write(values.help ? USAGE : `${PROGRAM}.ts ${VERSION} on ${runtimeName()}\n`);
      return 0;
    }
    timeoutSeconds = Number(values.timeout);
    // Past 2^31-1 ms a timer fires at once: send.ts would time out at start.
    if (!(timeoutSeconds >= 1 && timeoutSeconds <= MAX_TIMEOUT_SECONDS)) {
      throw new Error(`--timeout needs a number of seconds from 1 to ${MAX_TIMEOUT_SECONDS}, not "${values.timeout}"`);
    }
    status = values.status;
    verbose = values.verbose;
    if (status && positionals.length > 0) throw new Error("--status takes no URL");
    if (!status && positionals.length === 0) throw new Error("missing URL");
    socketPath = values.socket || process.env.URLSERVER_SOCKET ||
      (process.env.XDG_RUNTIME_DIR ? `${process.env.XDG_RUNTIME_DIR}/urlserver.sock` : `/tmp/urlserver-${process.getuid?.() ?? 0}/sock`);
    urls = positionals;
  } catch (error) {
    process.stderr.write(`${PROGRAM}: ${(error as Error).message.split("\n")[0]}\nRun "send.ts --help" for usage.\n`);
    return 64;
  }
  // No socket at PATH is no reason not to look for the clients' own (see Several desktops).
  const checked = checkSocket(socketPath);
  const refusal = "code" in checked && checked.code !== 69 ? checked : undefined;
  const route = refusal ? undefined : await chooseDesktop(socketPath, status);
  if (status) {
    if (refusal) return report(`no desktop is connected on this host: ${refusal.message}`, refusal.code);
    if (route!.refusal) return report(`no desktop is connected on this host: ${route!.refusal.message}`, route!.refusal.code);
    // One desktop that holds PATH keeps the one-line answer of a single desktop.
    const [only, ...others] = route!.desktops;
    if (others.length > 0 || (only && !only.holdsPath)) return reportDesktops(route!);
    return reportStatus(await exchangeChecked(socketPath, ["status"], timeoutSeconds), socketPath);
  }
  // One argument is one URL: one that is not is refused here, never sent.
  const answers = urls.map(notOneUrl);
  const sent = urls.flatMap((url, i) => answers[i] === undefined ? [i] : []);
  const failure = refusal ?? route!.refusal;
  const outcome: Outcome = failure ? { answers: [], failure: () => failure }
    : sent.length ? await exchangeChecked(route!.path, sent.map((i) => urls[i]), timeoutSeconds, verbose ? sayBusyOnce() : undefined)
    : { answers: [] };
  outcome.answers.forEach((answer, k) => { answers[sent[k]] = answer; });
  if (verbose && outcome.answers.includes("ok")) await reportWhere(route!, urls, answers);
  return reportDelivery(urls, answers, outcome.failure?.(quoted(urls[sent[outcome.answers.length]] ?? "")));
}

// --verbose: one line the first time the client is busy (sent again meanwhile).
function sayBusyOnce(): () => void {
  let said = false;
  return () => {
    if (!said) process.stderr.write(`${PROGRAM}: the client is busy (a URL in flight on each of its places): sending again until the timeout\n`);
    said = true;
  };
}

function report(message: string, code: number): number {
  process.stderr.write(`${PROGRAM}: ${message}\n`);
  return code;
}

// What sh and the kernel allow: sun_path holds 108 bytes on Linux, 104 on the
// BSDs and macOS, the final NUL included; Node would cut a longer path short.
const MAX_SOCKET_PATH_BYTES = process.platform === "linux" ? 107 : 103;

type Refusal = { code: number; message: string; noServer?: boolean };
// The socket checked before connecting: the path to connect to (its directory
// resolved) and the inode that was there, to be found there again once connected.
type Found = { path: string; dev: number; ino: number };

// Another user of this host must not receive our URLs, whatever they rename
// between our checks and our connect: /tmp/urlserver-UID is made here when
// absent, as the client makes it, so that the name is the user's for good;
// no directory on the way lets anyone else rename entries; the socket is the
// user's; and once connected, the same socket is still there (sameSocket)
// before a byte is written. No socket there is simply no server.
function checkSocket(socketPath: string): Refusal | Found {
  const tooLong = (path: string) => Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES &&
    { code: 64, message: `socket path "${path}" is ${Buffer.byteLength(path)} bytes long; this system allows at most ${MAX_SOCKET_PATH_BYTES}` };
  const uid = process.getuid?.();
  const refuse = (why: string) => ({ code: 77, message: `refusing to use socket "${socketPath}": ${why}` });
  const noServer = { code: 69, noServer: true, message: `cannot connect to "${socketPath}": no server is connected on this host: ${START_SERVER}` };
  try {
    const refusal = tooLong(socketPath) || defaultDirectoryRefusal(socketPath, uid);
    if (refusal) return refusal;
    const directory = realpathSync(dirname(socketPath));
    const unsafe = unsafeDirectory(directory, uid);
    if (unsafe) return refuse(unsafe);
    const path = join(directory, basename(socketPath));
    const info = lstatSync(path);
    if (!info.isSocket()) return refuse("it is not a socket");
    if (uid !== undefined && info.uid !== uid) return refuse(`it is owned by uid ${info.uid}, not ${uid}`);
    return tooLong(path) || { path, dev: info.dev, ino: info.ino };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return noServer;
    if (code === "EACCES" || code === "EPERM") {
      return refuse("permission denied on the way to it (another user's directory, such as a $XDG_RUNTIME_DIR left from before su?)");
    }
    throw error;
  }
}

// /tmp/urlserver-UID (which anyone could make first) is the user's only if
// made here or by the client, or already private to the user: the client's check.
function defaultDirectoryRefusal(socketPath: string, uid: number | undefined): Refusal | undefined {
  const directory = `/tmp/urlserver-${uid}`;
  if (uid === undefined || !socketPath.startsWith(`${directory}/`)) return undefined;
  try {
    mkdirSync(directory, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const info = lstatSync(directory);
  const refuse = (why: string) => ({ code: 77, message: `refusing to use socket directory "${directory}": ${why}` });
  if (!info.isDirectory()) return refuse("it is not a directory");
  if (info.uid !== uid) return refuse(`it is owned by uid ${info.uid}, not ${uid}`);
  if ((info.mode & 0o077) !== 0) return refuse(`its mode ${(info.mode & 0o777).toString(8)} lets others in`);
  return undefined;
}

// Whoever may rename entries in a directory on the way could swap the socket
// between any two checks: only root and the user may, or others only under
// the sticky bit (as in /tmp); a group may in the user's own directories
// (the user's choice of group, often the user's alone).
function unsafeDirectory(directory: string, uid: number | undefined): string | undefined {
  if (uid === undefined) return undefined;
  for (let path = directory; ; path = dirname(path)) {
    const info = lstatSync(path);
    if (info.uid !== uid && info.uid !== 0) return `directory "${path}" is owned by uid ${info.uid}`;
    const othersWrite = (info.mode & 0o002) !== 0 || ((info.mode & 0o020) !== 0 && info.uid !== uid);
    if (othersWrite && (info.mode & 0o1000) === 0) {
      return `others may rename things in directory "${path}" (mode ${(info.mode & 0o777).toString(8)}, no sticky bit)`;
    }
    if (path === dirname(path)) return undefined;
  }
}

// Read again once connected, before writing: the socket connected to is the
// one checked, unless it was swapped out and back between the two lstats,
// which only root and the user can do in the directories checkSocket allows.
function sameSocket(socketPath: string, found: Found): Refusal | undefined {
  const info = lstatSync(found.path, { throwIfNoEntry: false });
  if (info?.isSocket() && info.dev === found.dev && info.ino === found.ino) return undefined;
  return { code: 77, message: `refusing to use socket "${socketPath}": it was replaced while connecting` };
}

// Several desktops: each client also listens on a socket of its own in
// PATH.d/ (see client.ts), and PATH is the newest one's. A session goes to
// the desktop it came from, by the address in its SSH_CONNECTION; else to
// PATH's. An address only picks among the user's own sockets, each checked
// as PATH is; it never adds one.
const CLIENT_SOCKET_NAME = /^[0-9a-z]{1,12}-[0-9]{1,10}$/;
// Asking each client who it is: a client that does not answer soon is skipped.
const ASK_TIMEOUT_SECONDS = 2;
const TMUX_TIMEOUT_MS = 1000;

type Desktop = { path: string; name: string; address: string; since: string; pid: string; runtime: string; holdsPath: boolean };
type Route = { path: string; desktops: Desktop[]; chosen?: Desktop; address?: string; refusal?: Refusal };

// With one client (or clients of an older version, without PATH.d) and no
// URLSERVER_DESKTOP, PATH at once, asking nobody. --status asks them all.
async function chooseDesktop(socketPath: string, all: boolean): Promise<Route> {
  const named = process.env.URLSERVER_DESKTOP;
  const clients = clientSockets(socketPath);
  if (!Array.isArray(clients)) return { path: socketPath, desktops: [], refusal: clients };
  if ((!named || all) && clients.length < 2) return { path: socketPath, desktops: [] };
  const desktops = await askDesktops(socketPath, clients);
  if (named) {
    const chosen = desktops.find((desktop) => desktop.name === named);
    if (chosen || all) return { path: chosen?.path ?? socketPath, desktops, chosen };
    const connected = desktops.map((desktop) => quoted(desktop.name)).join(", ") || "none";
    return { path: socketPath, desktops, refusal: { code: 69, message: `no desktop named ${quoted(named)} is connected on this host (connected: ${connected})` } };
  }
  const address = desktopAddress(await sessionConnection());
  const fromHere = desktops.filter((desktop) => address && desktop.address === address);
  // The newest first: desktops behind one NAT, or a shared jump host, look alike.
  const chosen = fromHere.find((desktop) => desktop.holdsPath) ?? fromHere[0] ??
    desktops.find((desktop) => desktop.holdsPath) ?? desktops[0];
  const path = !chosen || (chosen.holdsPath && !fromHere.length) ? socketPath : chosen.path;
  return { path, desktops, chosen, address };
}

// The client sockets in PATH.d, newest first; a refusal if PATH.d is not the user's own.
function clientSockets(socketPath: string): string[] | Refusal {
  const directory = `${socketPath}.d`;
  const uid = process.getuid?.();
  const info = lstatSync(directory, { throwIfNoEntry: false });
  if (!info) return [];
  const why = !info.isDirectory() ? "it is not a directory"
    : uid !== undefined && info.uid !== uid ? `it is owned by uid ${info.uid}, not ${uid}`
    : (info.mode & 0o077) !== 0 ? `its mode ${(info.mode & 0o777).toString(8)} lets others in` : undefined;
  if (why) return { code: 77, message: `refusing to use socket directory "${directory}": ${why}` };
  return readdirSync(directory).filter((name) => CLIENT_SOCKET_NAME.test(name)).sort().reverse().map((name) => `${directory}/${name}`);
}

// Each client that is the user's own and answers, newest first, as it describes itself.
async function askDesktops(socketPath: string, clients: string[]): Promise<Desktop[]> {
  const holder = lstatSync(socketPath, { throwIfNoEntry: false });
  const desktops = await Promise.all(clients.map(async (path): Promise<Desktop | undefined> => {
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (!info) return undefined;
    // Checked as PATH is: another user's socket here is never written to.
    const [answer] = (await exchangeChecked(path, ["status"], ASK_TIMEOUT_SECONDS)).answers;
    if (!answer?.startsWith("ok ")) return undefined;
    const fields = new URLSearchParams(answer.slice(3).replaceAll(" ", "&"));
    const field = (name: string) => fields.get(name) ?? "";
    const holdsPath = holder !== undefined && holder.dev === info.dev && holder.ino === info.ino;
    return { path, name: field("desktop"), address: desktopAddress(field("address")), since: field("since"),
      pid: field("pid"), runtime: field("runtime"), holdsPath };
  }));
  return desktops.filter((desktop) => desktop !== undefined);
}

// Inside tmux a shell's environment is as old as the shell; tmux updates the
// session's SSH_CONNECTION on each attach: that one is asked, briefly.
// "-SSH_CONNECTION" is an attach without ssh: no address.
async function sessionConnection(): Promise<string | undefined> {
  if (!process.env.TMUX) return process.env.SSH_CONNECTION;
  const fromTmux = await new Promise<string | undefined>((resolve) => {
    // Only what tmux needs to find its server and our pane (Deno allows no more).
    const env = { TMUX: process.env.TMUX, TMUX_PANE: process.env.TMUX_PANE ?? "" };
    execFile("tmux", ["show-environment", "SSH_CONNECTION"], { timeout: TMUX_TIMEOUT_MS, encoding: "utf8", env }, (error, stdout) => {
      const line = stdout.split("\n")[0];
      resolve(error ? undefined : line === "-SSH_CONNECTION" ? "" : /^SSH_CONNECTION=(.*)$/.exec(line)?.[1]);
    });
  });
  return fromTmux ?? process.env.SSH_CONNECTION;
}

// The first field of SSH_CONNECTION: the address the session came from.
function desktopAddress(connection: string | undefined): string {
  const address = connection?.split(" ")[0] ?? "";
  return /^[\w.:%-]{1,64}$/.test(address) ? address : "";
}

// --verbose: which desktop opened the URLs (asked of the client if not yet known).
async function reportWhere(route: Route, urls: string[], answers: Array<string | undefined>): Promise<void> {
  let name = route.chosen?.name;
  if (name === undefined) {
    const [answer] = (await exchangeChecked(route.path, ["status"], ASK_TIMEOUT_SECONDS)).answers;
    name = answer?.startsWith("ok ") ? new URLSearchParams(answer.slice(3).replaceAll(" ", "&")).get("desktop") ?? "?" : "?";
  }
  urls.forEach((url, i) => {
    if (answers[i] === "ok") process.stderr.write(`${PROGRAM}: opened ${quoted(url)} on desktop ${quoted(name)}\n`);
  });
}

// --status with several desktops: one line each, newest first.
function reportDesktops(route: Route): number {
  for (const desktop of route.desktops) {
    const marks = [desktop.address ? `from ${printable(desktop.address)}` : "from an unknown address",
      ...(desktop.holdsPath ? ["the default"] : []), ...(desktop === route.chosen ? ["used by this session"] : [])];
    process.stdout.write(`connected to desktop ${quoted(desktop.name)} since ${printable(desktop.since)}` +
      ` (client pid ${printable(desktop.pid)} on ${printable(desktop.runtime)}), ${marks.join(", ")}\n`);
  }
  return 0;
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

// checkSocket, then exchange. A client taking the path over renames its
// socket there (see Several desktops): a socket replaced while connecting,
// nothing written yet, is checked and connected to again, twice at most.
// A client with a line in flight on every place answers `error busy` and
// takes none of this connection's lines: they are sent again, 0.1 s later,
// then 0.2, 0.4 ... 1 s apart, until the timeout (onBusy told each time).
async function exchangeChecked(socketPath: string, lines: string[], timeoutSeconds: number, onBusy?: () => void): Promise<Outcome> {
  const deadline = performance.now() + timeoutSeconds * 1000;
  let pause = 100;
  for (let attempt = 1; ; attempt++) {
    const found = checkSocket(socketPath);
    if ("code" in found) return { answers: [], failure: () => found };
    const outcome = await exchange(socketPath, found, lines, timeoutSeconds, deadline);
    const replaced = outcome.answers.length === 0 && outcome.failure?.("").message.endsWith(": it was replaced while connecting");
    const busy = outcome.answers[0] === "error busy" && performance.now() + pause < deadline;
    if (busy) {
      onBusy?.();
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 1000);
    } else if (!replaced || attempt >= 3) {
      return outcome;
    }
  }
}

// Writes every line, half-closes, then reads one answer per line, in order,
// until the deadline (performance.now()) of the whole timeout.
function exchange(socketPath: string, found: Found, lines: string[], timeoutSeconds: number, deadline: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect(found.path);
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
      code: 75, message: `timed out after ${timeoutSeconds} s waiting for the desktop to open ${pending}` })), Math.max(0, deadline - performance.now()));

    socket.on("connect", () => {
      const replaced = sameSocket(socketPath, found);
      if (replaced) return finish(() => replaced);
      connected = true;
      socket.end(lines.map((line) => `${line}\n`).join(""));
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (connected) return finish(() => ({ code: 69, message: `lost the connection to "${socketPath}": ${error.message}` }));
      const noServer = error.code === "ENOENT" || error.code === "ECONNREFUSED";
      if (error.code === "EACCES") return finish(() => ({ code: 77, message: `refusing to use socket "${socketPath}": permission denied` }));
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
      ` (client pid ${field("pid")} on ${field("runtime")})\n${forwardsLine(fields.get("forwards"))}`);
    return 0;
  }
  const failure = answer ? undefined : outcome.failure?.("the status");
  // The reason once: "no server is connected" is what "no desktop" already says.
  const why = answer ? printable(answer.replace(/^error ?/, ""))
    : failure?.noServer ? `nothing listens on "${socketPath}": ${START_SERVER}` : failure?.message;
  return report(`no desktop is connected on this host: ${why}`, 69);
}

// The desktop ports forwarded to this host, when the client has heard of them.
function forwardsLine(list: string | null): string {
  if (!list) return "";
  if (list === "none") return "no desktop port is forwarded to this host\n";
  const ports = list.split(",").map((pair) => pair.split(":")).map(([desktop, remote]) => desktop === remote ? desktop : `${desktop} (to ${remote})`);
  return `${printable(`desktop ports forwarded to this host: ${ports.join(", ")}`)}\n`;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, crash);
