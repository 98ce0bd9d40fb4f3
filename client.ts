#!/bin/sh
":" //; s=$0; [ -L "$s" ] && s=$(readlink -f "$s"); case $s in /*) ;; *) s=$PWD/$s; esac
":" //; x() { for r; do case $r in /*) [ -f "$r" ] && [ -x "$r" ] && return;; */*) ;; ?*) command -v "$r" >/dev/null && return;; esac; done; false; }
":" //; p=$HOME/.local/share/urlserver/runtime; [ -d "$p" ] && { m=; for r in /lib/ld-musl-*; do [ -e "$r" ] && m=-musl; done; p=$p/$(uname -s)-$(uname -m)$m/bin; }
":" //; x deno "$HOME/.deno/bin/deno" "$HOME/.local/bin/deno" "$p/deno" && exec "$r" run --no-prompt --no-config --allow-read --allow-write --allow-net --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR,SSH_CONNECTION --allow-sys "$s" "$@"
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
":" //; echo "client.ts: no runtime found on PATH or in ~/.deno/bin, ~/.bun/bin, ~/.local/bin, ~/.nvm/versions/node, ~/.volta/bin, ~/.local/share/urlserver/runtime: needs Deno 2, Bun 1, Node 22.6+, or Node 20+ with tsx or npx; on the desktop, \"server.ts --install HOST\" brings one" >&2; exit 69
// client.ts: the remote end of urlserver. It listens on a private Unix socket
// for URLs (from send.ts, or anything that writes a line to the socket) and
// forwards them over stdout, the SSH channel, to server.ts on the desktop.
//
// server.ts starts it for you over ssh, as `sh client.ts`: the lines above
// run it with the first of Deno, Bun, Node 22.6+, Node with tsx, or npx tsx
// found here, on PATH or where a user installs one without root (README,
// Runtimes), in "/" so that nothing in the current directory is read. Or:
//   npx tsx client.ts [--socket PATH]            Node 20+ with tsx
//   node client.ts [--socket PATH]               Node 22.18+ (type stripping)
//   deno run --no-prompt --no-config --allow-read --allow-write --allow-net \
//     --allow-env=URLSERVER_SOCKET,XDG_RUNTIME_DIR,SSH_CONNECTION --allow-sys client.ts
//   bun client.ts
// (these four read the current directory's node_modules, .npmrc, package.json,
// bunfig.toml or .env: only where you trust it).
//
// It exits when its stdin (the channel from the server) ends, when the server
// has been silent for three heartbeat intervals, or on a signal, and removes
// its socket each time. Several clients (one per desktop serving this host)
// share the socket path: the newest holds it, the others stand by, each
// reachable on a socket of its own beside it (see joinDesktops). Exit codes:
// 0 server went away, 64 usage, 69 something else than a socket at the path,
// or it cannot listen, 70 internal error, 75 server silent, 76 protocol
// mismatch, 77 unsafe socket directory, another user's socket, or permission
// denied on the way to it, 128+N signal N.

import { existsSync, linkSync, lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync, statSync, unlinkSync } from "node:fs";
import { connect, createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

const PROGRAM = "client";
const USAGE = `Usage: client.ts [--socket PATH]

Listen on a Unix socket for URLs and forward them over stdout to server.ts.
Normally started by server.ts over ssh; it exits when its stdin ends. Started
by hand, it says hello on stdout; type "ping" and it answers "pong".

Options:
  --socket PATH   the socket to listen on (default: $URLSERVER_SOCKET, else
                  $XDG_RUNTIME_DIR/urlserver.sock, else /tmp/urlserver-UID/sock)
  -h, --help      show this help
  --version       print the version, and the runtime running this and its path

Several clients may serve one socket path, one per desktop: the newest holds
the path, the others stand by on sockets of their own in PATH.d/, and the most
recent of them takes the path over when the one holding it goes.

Environment: URLSERVER_SOCKET, XDG_RUNTIME_DIR as above; SSH_CONNECTION (set
by sshd) names the desktop's address, for send.ts to route by.

Examples:
  sh client.ts                                  what server.ts runs over ssh
  npx tsx client.ts --socket /tmp/try.sock      try it by hand

Exit codes: 0 server went away, 64 usage, 69 not a socket at the path, or
cannot listen, 70 internal error, 75 server silent for 3 heartbeats, 76
protocol mismatch, 77 unsafe socket directory, another user's stale socket, or
permission denied on the way to the socket, 128+N ended by signal N (141:
stdout closed)
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

const PROTOCOL = "urlserver/1";
const MAX_LINE_BYTES = 8192;
const IDLE_MS = 10_000;
// Enough for any real burst of senders; a flood of connections costs at most this many.
const MAX_CONNECTIONS = 64;
// A connection is read only while its answers are few and being read: a
// sender that writes and never reads cannot make this client hold much.
const MAX_PENDING_ANSWERS = 16;
const MAX_UNREAD_ANSWER_BYTES = 64 * 1024;
// A place is held for at most this long, however the sender paces its lines.
const MAX_CONNECTION_MS = 60_000;
// A sender that has all its answers and sends nothing more is done, even if it
// never half-closes (OpenBSD's nc -U does not): its connection is ended.
const QUIET_END_MS = 300;
const DEFAULT_KEEPALIVE_SECONDS = 15;
const MAX_KEEPALIVE_SECONDS = 3600;
// sun_path holds 108 bytes on Linux, 104 on the BSDs and macOS, the final NUL
// included; Node would cut a longer path short and listen somewhere else.
const MAX_SOCKET_PATH_BYTES = process.platform === "linux" ? 107 : 103;

type Pending = { resolve: (answer: string) => void };

async function main(argv: string[]): Promise<number> {
  let socketPath: string;
  try {
    const { values } = parseArgs({
      args: argv,
      strict: true,
      options: { socket: { type: "string" }, help: { type: "boolean", short: "h" }, version: { type: "boolean" } },
    });
    if (values.help || values.version) {
      process.stdout.write(values.help ? USAGE : `${PROGRAM}.ts ${VERSION} on ${runtimeName()}\n`);
      return 0;
    }
    socketPath = resolveSocketPath(values.socket);
  } catch (error) {
    return usageError((error as Error).message.split("\n")[0]);
  }
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    return usageError(`socket path "${socketPath}" is ${Buffer.byteLength(socketPath)} bytes long; this system allows at most ${MAX_SOCKET_PATH_BYTES}`);
  }

  const ownPath = ownSocketPath(socketPath);
  if (Buffer.byteLength(ownPath) > MAX_SOCKET_PATH_BYTES) {
    return usageError(`socket path "${socketPath}" is too long for this client's own socket beside it, "${ownPath}" (${Buffer.byteLength(ownPath)} bytes); this system allows at most ${MAX_SOCKET_PATH_BYTES}`);
  }

  const refusal = (await socketRefusal(socketPath)) ?? privateDirectoryRefusal(socketPath);
  if (refusal) {
    process.stderr.write(`${PROGRAM}: ${refusal.message}\n`);
    return refusal.code;
  }
  await liveSockets(socketPath);
  const listener = await listenPrivately(ownPath);
  if (listener instanceof Error) {
    if (isDenied(listener)) {
      process.stderr.write(`${PROGRAM}: ${deniedMessage(ownPath)}\n`);
      return 77;
    }
    process.stderr.write(`${PROGRAM}: cannot listen on "${ownPath}": ${listener.message}\n`);
    return 69;
  }
  const ours = statSync(ownPath);
  const reached = await reachesListener(listener, ownPath);
  const joined = reached ? joinDesktops(socketPath, ownPath, ours) : undefined;
  endTurn();
  if (!reached) {
    process.stderr.write(`${PROGRAM}: cannot listen on "${ownPath}": another program has just started listening there\n`);
    return 69;
  }
  if (joined) {
    process.stderr.write(`${PROGRAM}: ${joined.message}\n`);
    return joined.code;
  }

  return serveUntilServerGone(listener, socketPath);
}

function usageError(message: string): number {
  process.stderr.write(`${PROGRAM}: ${message}\nRun "client.ts --help" for usage.\n`);
  return 64;
}

// Never a path in the home directory: homes are often shared over NFS between
// hosts, and every host's client would fight over one socket there.
function resolveSocketPath(option: string | undefined): string {
  const runtimeDir = process.env.XDG_RUNTIME_DIR;
  return option || process.env.URLSERVER_SOCKET ||
    (runtimeDir ? `${runtimeDir}/urlserver.sock` : `/tmp/urlserver-${process.getuid?.() ?? 0}/sock`);
}

// Whatever stands in the way, said in one line: permission denied on the
// path (a stale $XDG_RUNTIME_DIR after su) is a refusal, not an internal error.
async function socketRefusal(socketPath: string): Promise<{ code: number; message: string } | undefined> {
  try {
    return prepareSocketDirectory(socketPath) ?? (await takeTurn(socketPath)) ?? (await clearStaleSocket(socketPath));
  } catch (error) {
    if (!isDenied(error)) throw error;
    return { code: 77, message: deniedMessage(socketPath) };
  }
}

function isDenied(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === "EACCES" || code === "EPERM";
}

function deniedMessage(socketPath: string): string {
  return `refusing to use socket "${socketPath}": permission denied on the way to it (another user's directory, such as a $XDG_RUNTIME_DIR left from before su?)`;
}

// /tmp/urlserver-UID is ours only if we made it or it is already private to us,
// as tmux does for its socket directory.
function prepareSocketDirectory(socketPath: string): { code: number; message: string } | undefined {
  const uid = process.getuid?.();
  const directory = `/tmp/urlserver-${uid}`;
  if (uid === undefined || !socketPath.startsWith(`${directory}/`)) return undefined;
  try {
    mkdirSync(directory, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const info = lstatSync(directory);
  if (!info.isDirectory() || info.uid !== uid || (info.mode & 0o077) !== 0) {
    const why = !info.isDirectory() ? "it is not a directory"
      : info.uid !== uid ? `it is owned by uid ${info.uid}, not ${uid}`
      : `its mode ${(info.mode & 0o777).toString(8)} lets others in`;
    return { code: 77, message: `refusing to use socket directory "${directory}": ${why}` };
  }
  return undefined;
}

// Clients starting at the same moment take turns, or two of them could find
// one stale socket and both replace it, one listening on a path the other
// has since taken: the turn is a directory beside the socket, made only if
// absent. One older than LOCK_STALE_MS is a killed client's, and is taken
// over; so is one dated more than that in the future.
const LOCK_STALE_MS = 2000;
let endTurn = () => {};

async function takeTurn(socketPath: string): Promise<{ code: number; message: string } | undefined> {
  const lock = `${socketPath}.lock`;
  for (;;) {
    try {
      mkdirSync(lock, { mode: 0o700 });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const info = lstatSync(lock, { throwIfNoEntry: false });
    const uid = process.getuid?.();
    if (info && uid !== undefined && info.uid !== uid) {
      return { code: 77, message: `refusing to use socket "${socketPath}": "${lock}" is owned by uid ${info.uid}, not ${uid}` };
    }
    // Dated in the future, it was left before the clock was stepped back.
    const age = info ? Date.now() - info.mtimeMs : 0;
    if (age > LOCK_STALE_MS || age < -LOCK_STALE_MS) rmSync(lock, { recursive: true, force: true });
    else await new Promise((resolve) => setTimeout(resolve, 10));
  }
  endTurn = () => {
    endTurn = () => {};
    rmSync(lock, { recursive: true, force: true });
  };
  cleanups.push(() => endTurn());
  return undefined;
}

// A socket nobody answers on was left by a killed client and may be replaced;
// one that answers belongs to a live client, which will stand by.
async function clearStaleSocket(socketPath: string): Promise<{ code: number; message: string } | undefined> {
  let info;
  try {
    info = lstatSync(socketPath);
  } catch {
    return undefined;
  }
  if (!info.isSocket()) {
    return { code: 69, message: `"${socketPath}" exists and is not a socket: not touching it` };
  }
  const uid = process.getuid?.();
  if (uid !== undefined && info.uid !== uid) {
    return { code: 77, message: `refusing to use socket "${socketPath}": it is owned by uid ${info.uid}, not ${uid}` };
  }
  const answered = await new Promise<boolean>((resolve) => {
    const probe = connect(socketPath);
    probe.on("connect", () => { probe.destroy(); resolve(true); });
    probe.on("error", () => resolve(false));
  });
  // A live client's socket is not removed: the new client takes the path
  // over from it in one rename (joinDesktops), and it stands by.
  if (!answered) rmSync(socketPath, { force: true });
  return undefined;
}

// Until the listener is known to be the one at the path, a connection is only
// looked at for the probe's token (see reachesListener); then it is served.
let onConnection: (connection: Socket) => void = (connection) => connection.destroy();

// The umask makes the socket owner-only from the moment it exists: no
// create-then-chmod window in which another user could connect.
function listenPrivately(socketPath: string): Promise<Server | Error> {
  const listener = createServer({ allowHalfOpen: true }, (connection) => onConnection(connection));
  const previousUmask = process.umask(0o177);
  return new Promise((resolve) => {
    listener.once("error", (error) => { process.umask(previousUmask); resolve(error); });
    listener.listen(socketPath, () => { process.umask(previousUmask); resolve(listener); });
  });
}

// Even taking turns, the path may have been taken meanwhile (a client that
// stalled past the lock's age, another program): a client says hello only
// if a connection to the path reaches its own listener, carrying a token.
function reachesListener(listener: Server, socketPath: string): Promise<boolean> {
  const token = `probe-${process.pid}-${Date.now()}-${Math.random()}`;
  return new Promise((resolve) => {
    let settled = false;
    const done = (reached: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      probe.destroy();
      onConnection = reached ? serveConnection : (connection) => connection.destroy();
      resolve(reached);
    };
    onConnection = (connection) => {
      let received = "";
      connection.setEncoding("utf8");
      connection.on("error", () => connection.destroy());
      connection.on("data", (chunk: string) => {
        received += chunk;
        if (received === `${token}\n`) done(true);
        if (received.length > token.length) connection.destroy();
      });
    };
    const probe = connect(socketPath, () => probe.write(`${token}\n`));
    // Answered or closed by someone else: the path is not ours.
    probe.on("data", () => done(false));
    probe.on("close", () => done(false));
    probe.on("error", () => done(false));
    const timer = setTimeout(() => done(false), 5000);
  });
}

// An old client dying late must not delete the socket of the one that replaced it.
function removeOwnSocket(socketPath: string, dev: number, ino: number): void {
  const now = statSync(socketPath, { throwIfNoEntry: false });
  if (now && now.dev === dev && now.ino === ino) unlinkSync(socketPath);
}

// Several desktops, one socket path. Each client listens on a socket of its
// own, PATH.d/NAME (NAME: its start time in base 36 and its pid, so that
// names sort by age), in a directory as private as /tmp/urlserver-UID. The
// documented PATH is a second name (a hard link) for the default client's
// socket: a client becomes the default by linking its own socket to a
// temporary name and renaming that over PATH, so a sender finds a socket
// there at every moment. The newest client takes PATH as it starts; the
// others stand by, still connected, each checking every WATCH_MS whether it
// still holds PATH. When the holder is gone, whoever notices first (taking
// turns) gives PATH to the most recent live client. Live means answering a
// connect: a killed client leaves a socket nobody answers on, removed then.
const WATCH_MS = 300;
const OWN_SOCKET_NAME = /^[0-9a-z]{1,12}-[0-9]{1,10}$/;
// A client that does not accept within this long is busy, not gone.
const PROBE_TIMEOUT_MS = 2000;

type Refusal = { code: number; message: string };
type Identity = { dev: number; ino: number };
const desktops = { socketPath: "", ownPath: "", dev: -1, ino: -1, holdsPath: true, rolesKnown: false };

function ownSocketPath(socketPath: string): string {
  return `${socketPath}.d/${Date.now().toString(36)}-${process.pid}`;
}

// PATH.d is ours only if we made it or it is already private to us.
function privateDirectoryRefusal(socketPath: string): Refusal | undefined {
  const directory = `${socketPath}.d`;
  const uid = process.getuid?.();
  try {
    mkdirSync(directory, { mode: 0o700 });
  } catch (error) {
    if (isDenied(error)) return { code: 77, message: deniedMessage(directory) };
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const info = lstatSync(directory);
  if (uid === undefined) return undefined;
  const why = !info.isDirectory() ? "it is not a directory"
    : info.uid !== uid ? `it is owned by uid ${info.uid}, not ${uid}`
    : (info.mode & 0o077) !== 0 ? `its mode ${(info.mode & 0o777).toString(8)} lets others in` : undefined;
  return why ? { code: 77, message: `refusing to use socket directory "${directory}": ${why}` } : undefined;
}

function sameSocket(info: Identity | undefined, other: Identity): boolean {
  return info !== undefined && info.dev === other.dev && info.ino === other.ino;
}

// Taking turns: the newest client takes PATH (from a live client too, which
// then stands by), and watches from now on whether it still holds it.
function joinDesktops(socketPath: string, ownPath: string, ours: Identity): Refusal | undefined {
  Object.assign(desktops, { socketPath, ownPath, dev: ours.dev, ino: ours.ino });
  cleanups.push(leaveDesktops);
  try {
    giveThePath(socketPath, ownPath);
  } catch (error) {
    const { code, syscall } = error as NodeJS.ErrnoException;
    // A sticky directory refuses to replace another user's file (made since our check).
    if (syscall === "rename" && (code === "EPERM" || code === "EACCES")) {
      return { code: 77, message: `refusing to use socket "${socketPath}": it cannot be replaced (${code}): another user's` };
    }
    return { code: 69, message: `cannot take "${socketPath}" over: ${(error as Error).message}` };
  }
  watchThePath();
  return undefined;
}

// One rename: PATH is the old socket until it is the new one, never absent.
// Never over something that is not our own socket (the callers check, taking turns).
function giveThePath(socketPath: string, fromPath: string): void {
  const temporary = `${fromPath}.new`;
  rmSync(temporary, { force: true });
  linkSync(fromPath, temporary);
  try {
    renameSync(temporary, socketPath);
  } finally {
    rmSync(temporary, { force: true });
  }
}

// Taking turns: the clients in PATH.d that answer, most recent first. A
// killed client's socket, and a temporary name a client killed while taking
// PATH left, are removed.
async function liveSockets(socketPath: string): Promise<string[]> {
  const directory = `${socketPath}.d`;
  const uid = process.getuid?.();
  const names = readdirSync(directory).filter((name) => OWN_SOCKET_NAME.test(name.replace(/\.new$/, ""))).sort().reverse();
  const live = await Promise.all(names.map(async (name) => {
    const path = `${directory}/${name}`;
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (!info || (uid !== undefined && info.uid !== uid)) return undefined;
    if (path === desktops.ownPath) return path;
    if (info.isSocket() && !name.endsWith(".new") && await answers(path)) return path;
    removeOwnSocket(path, info.dev, info.ino);
    return undefined;
  }));
  return live.filter((path) => path !== undefined);
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(socketPath);
    const timer = setTimeout(() => { probe.destroy(); resolve(true); }, PROBE_TIMEOUT_MS);
    probe.on("connect", () => { clearTimeout(timer); probe.destroy(); resolve(true); });
    probe.on("error", () => { clearTimeout(timer); resolve(false); });
  });
}

function watchThePath(): void {
  let checking = false;
  let lastProblem = "";
  const timer = setInterval(() => {
    if (checking) return;
    checking = true;
    checkThePath().then(() => { lastProblem = ""; }, (error: Error) => {
      // Said once, not every WATCH_MS: the user fixes it, or nothing changes.
      if (error.message !== lastProblem) process.stderr.write(`${PROGRAM}: cannot check "${desktops.socketPath}": ${error.message}\n`);
      lastProblem = error.message;
    }).finally(() => { checking = false; });
  }, WATCH_MS);
  timer.unref();
}

// Whether PATH is still ours; if it is a socket nobody answers on, it is
// given to the most recent live client; then whether that is us. A PATH
// someone removed is left removed (the clients stay reachable in PATH.d),
// and so is anything at PATH that is not a socket of ours.
async function checkThePath(): Promise<void> {
  const { socketPath } = desktops;
  let info = lstatSync(socketPath, { throwIfNoEntry: false });
  if (!info) return;
  if (!sameSocket(info, desktops) && socketOfOurs(info) && !(await answers(socketPath))) {
    await repairThePath();
    info = lstatSync(socketPath, { throwIfNoEntry: false });
  }
  roleIs(sameSocket(info, desktops));
}

function socketOfOurs(info: ReturnType<typeof lstatSync> | undefined): boolean {
  return info !== undefined && info.isSocket() && info.uid === process.getuid?.();
}

async function repairThePath(): Promise<void> {
  const { socketPath } = desktops;
  const before = cleanups.length;
  if (await takeTurn(socketPath)) return;
  try {
    const info = lstatSync(socketPath, { throwIfNoEntry: false });
    // Another client may have mended it while we waited for our turn.
    if (!socketOfOurs(info) || (!sameSocket(info, desktops) && await answers(socketPath))) return;
    const [newest] = await liveSockets(socketPath);
    if (newest) giveThePath(socketPath, newest);
  } finally {
    endTurn();
    // takeTurn's own cleanup, which endTurn made a no-op: a long life of repairs must not pile them up.
    cleanups.splice(before);
  }
}

// The server hears when this client stops being the default and when it is
// the default again, if it understands those lines (its hello says so).
function roleIs(holdsPath: boolean): void {
  if (holdsPath === desktops.holdsPath) return;
  desktops.holdsPath = holdsPath;
  announceRole();
}

function announceRole(): void {
  if (!desktops.rolesKnown) return;
  if (desktops.holdsPath) return sendToServer("default");
  askStatus(desktops.socketPath).then((answer) => {
    if (desktops.holdsPath) return;
    const theirs = new URLSearchParams(answer.startsWith("ok ") ? answer.slice(3).replaceAll(" ", "&") : "");
    const fields = new URLSearchParams({ desktop: theirs.get("desktop") ?? "", address: theirs.get("address") ?? "" });
    sendToServer(`standby ${fields.toString().replaceAll("&", " ")}`);
  }, crash);
}

// The "status" answer of whoever listens at socketPath, or "" if none comes.
function askStatus(socketPath: string): Promise<string> {
  return new Promise((resolve) => {
    let received = "";
    const probe = connect(socketPath, () => probe.write("status\n"));
    const done = () => { clearTimeout(timer); probe.destroy(); resolve(received.split("\n")[0]); };
    const timer = setTimeout(done, PROBE_TIMEOUT_MS);
    probe.setEncoding("utf8");
    probe.on("data", (chunk: string) => {
      received += chunk;
      if (received.includes("\n") || received.length > MAX_LINE_BYTES) done();
    });
    probe.on("error", done);
    probe.on("end", done);
  });
}

function tryGiveThePath(socketPath: string, fromPath: string): boolean {
  try {
    giveThePath(socketPath, fromPath);
    return true;
  } catch {
    return false;
  }
}

// One may be leaving too, its socket gone since the list was read; or gone
// just after PATH became it: it removes its socket before it looks whether it
// holds PATH, so one that looked before would never know. Either way PATH
// goes on to the next.
function handedOn(socketPath: string, toPath: string): boolean {
  return tryGiveThePath(socketPath, toPath) && existsSync(toPath);
}

// On the way out, taking turns: PATH goes to the most recent other client,
// or away. (A dead one gets it if it died unnoticed; the others' watch
// mends that.)
function leaveDesktops(): void {
  const { socketPath, ownPath } = desktops;
  const directory = `${socketPath}.d`;
  removeOwnSocket(ownPath, desktops.dev, desktops.ino);
  const lock = `${socketPath}.lock`;
  const holdsPath = sameSocket(lstatSync(socketPath, { throwIfNoEntry: false }), desktops);
  // A turn held this long is a stalled or killed client's: PATH is given
  // without it. One standing by only wants it to remove PATH.d if it is the last.
  const turn = takeTurnNow(lock, holdsPath ? LEAVE_WAIT_MS : 0);
  try {
    if (holdsPath && sameSocket(lstatSync(socketPath, { throwIfNoEntry: false }), desktops)) {
      // The last to leave but us may have removed the directory already.
      const others = existsSync(directory) ? readdirSync(directory).filter((name) => OWN_SOCKET_NAME.test(name)).sort().reverse() : [];
      if (!others.some((name) => handedOn(socketPath, `${directory}/${name}`))) unlinkSync(socketPath);
    }
    if (turn) rmdirSync(directory);
  } catch {
    // Others are still in the directory, or it is gone already.
  } finally {
    if (turn) rmSync(lock, { recursive: true, force: true });
  }
}

// The turn, on the way out, where nothing can wait for an event: clients
// leaving together take it one after the other, within LEAVE_WAIT_MS.
const LEAVE_WAIT_MS = 1000;

function takeTurnNow(lock: string, waitMs: number): boolean {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (const started = Date.now(); ;) {
    try {
      mkdirSync(lock, { mode: 0o700 });
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") return false;
    }
    if (Date.now() - started >= waitMs) return false;
    Atomics.wait(pause, 0, 0, 5);
  }
}

// The session: hello, then URLs out and answers in, until stdin ends.
const pending = new Map<string, Pending>();
let nextId = 1;
let allowedSchemes: Set<string> | undefined;
// What send.ts --status reports, from the server's hello.
let desktop: { name: string; since: string } | undefined;

function serveUntilServerGone(listener: Server, socketPath: string): Promise<number> {
  listener.on("error", crash);
  sendToServer(`hello ${PROTOCOL} runtime=${encodeURIComponent(runtimeName())} pid=${process.pid} socket=${encodeURIComponent(socketPath)} version=${VERSION}`);
  return new Promise((resolve) => {
    const silence = silenceWatch(resolve);
    const channel = createInterface({ input: process.stdin, crlfDelay: Infinity });
    channel.on("line", (line) => {
      silence.heard();
      const failure = handleServerLine(line, silence);
      if (failure !== undefined) resolve(failure);
    });
    // The server, its ssh or the network is gone: stop claiming we can deliver.
    channel.on("close", () => resolve(0));
  });
}

// While the channel to the server is not draining (the server or the network
// is slow, or stopped), no connection is read: URLs wait with their senders.
let channelBlocked = false;
const connectionsToWake = new Set<() => void>();

function sendToServer(line: string): void {
  if (process.stdout.write(`${line}\n`) || channelBlocked) return;
  channelBlocked = true;
  process.stdout.once("drain", () => {
    channelBlocked = false;
    for (const wake of connectionsToWake) wake();
  });
}

// Exits when the server has said nothing for three heartbeat intervals. Until
// the server's hello sets the interval the default applies, except when a
// person is typing at stdin to try the client by hand.
function silenceWatch(resolve: (code: number) => void) {
  let intervalMs = DEFAULT_KEEPALIVE_SECONDS * 1000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      process.stderr.write(`${PROGRAM}: no word from the server for ${(3 * intervalMs) / 1000} s: connection lost\n`);
      resolve(75);
    }, 3 * intervalMs);
  };
  if (!process.stdin.isTTY) arm();
  return {
    heard: () => { if (timer) arm(); },
    setInterval: (seconds: number) => { intervalMs = seconds * 1000; arm(); },
  };
}

function handleServerLine(line: string, silence: { setInterval: (seconds: number) => void }): number | undefined {
  const [verb, id, ...rest] = line.split(" ");
  if (verb === "ping") {
    sendToServer("pong");
  } else if (verb === "ok" || verb === "error") {
    const waiter = pending.get(id);
    pending.delete(id);
    waiter?.resolve(verb === "ok" ? "ok" : `error ${rest.join(" ") || "refused"}`);
  } else if (verb === "hello") {
    if (id !== PROTOCOL) {
      process.stderr.write(`${PROGRAM}: the server speaks "${id}", this client speaks "${PROTOCOL}": use matching copies of server.ts and client.ts\n`);
      return 76;
    }
    const fields = new URLSearchParams(rest.join("&"));
    const keepalive = Number(fields.get("keepalive"));
    if (keepalive >= 1 && keepalive <= MAX_KEEPALIVE_SECONDS) silence.setInterval(keepalive);
    allowedSchemes = new Set((fields.get("schemes") ?? "").split(",").filter(Boolean));
    desktop = { name: fields.get("desktop") ?? "unknown", since: new Date().toISOString() };
    desktops.rolesKnown = fields.get("standby") === "1";
    if (!desktops.holdsPath) announceRole();
  } else if (verb === "forwards") {
    forwardsHeard(id);
  }
  return undefined;
}

// The desktop ports forwarded to this host, as the server (0.4 and later)
// last said them: DESKTOP_PORT:REMOTE_PORT,... or "none"; for send.ts --status.
let forwards: string | undefined;

function forwardsHeard(list: string | undefined): void {
  if (list && /^(none|[0-9]{1,5}:[0-9]{1,5}(,[0-9]{1,5}:[0-9]{1,5}){0,63})$/.test(list)) forwards = list;
}

// The connections being served, MAX_CONNECTIONS at most. When every place is
// taken, a new connection takes the place of the one idle longest (none of
// its lines waiting or in flight), which is answered "error busy" as a
// refused newcomer is: connections that sit idle or reconnect at once never
// keep a fresh sender out. A newcomer is busy only when every place has a
// line in flight.
const places = new Set<ConnectionSession>();

// One connection: URLs in, one line each; answers out in the same order.
function serveConnection(connection: Socket): void {
  if (places.size >= MAX_CONNECTIONS) {
    const idlest = longestIdle();
    if (!idlest) {
      connection.write("error busy\n");
      return finishWithout(connection);
    }
    idlest.giveUpPlace();
  }
  places.add(new ConnectionSession(connection));
}

function longestIdle(): ConnectionSession | undefined {
  let idlest: ConnectionSession | undefined;
  for (const session of places) {
    if (session.idle() && (!idlest || session.idleSince < idlest.idleSince)) idlest = session;
  }
  return idlest;
}

type Slot = { text?: string };

// A connection's state and its steps. Every event comes to progress():
// answers that are ready go out in order, lines are taken while the sender
// reads its answers and the channel drains, and what to wait for next is
// decided. An answer can be settled while lines are being taken; that is one
// more turn of the loop, not a nested call.
class ConnectionSession {
  readonly connection: Socket;
  readonly answers: Slot[] = [];
  buffered: Buffer = Buffer.alloc(0);
  closing: false | "refused" | "finishing" = false;
  linesTaken = 0;
  // When its last line was taken or answered, or it connected.
  idleSince = performance.now();
  quietTimer: ReturnType<typeof setTimeout> | undefined;
  idleTimer: ReturnType<typeof setTimeout> | undefined;
  readonly lifetime: ReturnType<typeof setTimeout>;
  running = false;
  again = false;
  readonly wake = () => this.progress();

  constructor(connection: Socket) {
    this.connection = connection;
    this.armIdle();
    this.lifetime = setTimeout(() => this.endOfLife(), MAX_CONNECTION_MS);
    connectionsToWake.add(this.wake);
    connection.on("data", (chunk: Buffer) => this.received(chunk));
    connection.on("end", this.wake);
    connection.on("drain", this.wake);
    connection.on("error", () => connection.destroy());
    connection.on("close", () => {
      for (const timer of [this.idleTimer, this.quietTimer, this.lifetime]) clearTimeout(timer);
      connectionsToWake.delete(this.wake);
      places.delete(this);
    });
  }

  received(chunk: Buffer): void {
    clearTimeout(this.quietTimer);
    this.quietTimer = undefined;
    if (this.closing) return; // discarded
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    this.progress();
  }

  armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      // Lines taken or waiting to be taken: it is the desktop that is slow.
      if (this.answers.length > 0 || this.buffered.includes(10)) return this.armIdle();
      this.refuseAndClose(`no complete line within ${IDLE_MS / 1000} s`);
    }, IDLE_MS);
  }

  // At the bound, lines still waiting for the desktop are answered too: the
  // place is given back now, not when the desktop gets round to them.
  endOfLife(): void {
    const reason = `connection open longer than ${MAX_CONNECTION_MS / 1000} s`;
    for (const slot of this.answers) slot.text ??= `error ${reason}`;
    this.refuseAndClose(reason);
    this.progress();
  }

  idle(): boolean {
    return !this.closing && this.answers.length === 0 && !this.buffered.includes(10);
  }

  // Its place is wanted: a sender that has all its answers is ended as if it
  // had been quiet; any other is told "busy" (no line of it was taken).
  giveUpPlace(): void {
    places.delete(this);
    if (this.linesTaken > 0 && this.buffered.length === 0) return this.finish();
    this.refuseAndClose("busy");
  }

  holding(): boolean {
    return channelBlocked || this.answers.length >= MAX_PENDING_ANSWERS || this.connection.writableLength > MAX_UNREAD_ANSWER_BYTES;
  }

  // Reserve the next answer's place; the returned function fills it in.
  answer(): (final: string) => void {
    const slot: Slot = {};
    this.answers.push(slot);
    return (final: string) => { slot.text = final; this.progress(); };
  }

  // Stop taking lines at once (the rest of an overlong line is never
  // buffered) and close once the earlier lines have their answers.
  refuseAndClose(reason: string): void {
    if (this.closing) return;
    this.closing = "refused";
    this.buffered = Buffer.alloc(0);
    this.answer()(`error ${reason}`);
  }

  progress(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    do {
      this.again = false;
      this.step();
    } while (this.again);
    this.running = false;
  }

  step(): void {
    this.writeReadyAnswers();
    if (this.takeLines() || this.refuseUnfinishedLine()) return;
    if (this.closing || !this.holding()) this.connection.resume();
    else this.connection.pause();
    if (this.answers.length > 0 || this.closing === "finishing") return;
    // 'end' can come while the socket is paused (Bun): lines may still be waiting here.
    if (this.closing === "refused" || (this.connection.readableEnded && !this.buffered.includes(10))) return this.finish();
    if (this.buffered.length === 0 && this.linesTaken > 0 && !this.quietTimer) this.quietTimer = setTimeout(() => this.finish(), QUIET_END_MS);
  }

  writeReadyAnswers(): void {
    while (this.answers.length > 0 && this.answers[0].text !== undefined) {
      const { text } = this.answers.shift()!;
      if (!this.connection.destroyed) this.connection.write(`${text}\n`);
      if (this.answers.length === 0) this.idleSince = performance.now();
    }
  }

  // Takes complete lines while not holding; true if it refused one (this turn is over).
  takeLines(): boolean {
    let newline;
    while (!this.closing && !this.holding() && (newline = this.buffered.indexOf(10)) !== -1) {
      const line = this.buffered.subarray(0, newline);
      this.buffered = this.buffered.subarray(newline + 1);
      if (line.length > MAX_LINE_BYTES + 1) {
        this.refuseAndClose(`line longer than ${MAX_LINE_BYTES} bytes`);
        return true;
      }
      this.linesTaken += 1;
      this.idleSince = performance.now();
      this.armIdle();
      // A status costs a place as a URL does: answered, then the connection ends.
      if (isStatusLine(line)) {
        this.closing = "refused";
        this.buffered = Buffer.alloc(0);
      }
      forward(line, this.answer());
    }
    return false;
  }

  // An overlong partial line, or one the sender ended without its newline
  // (it may have been cut short: never opened), is refused; true if so.
  refuseUnfinishedLine(): boolean {
    if (this.closing || this.buffered.includes(10)) return false;
    if (this.buffered.length > MAX_LINE_BYTES + 1) {
      this.refuseAndClose(`line longer than ${MAX_LINE_BYTES} bytes`);
      return true;
    }
    if (!this.connection.readableEnded || this.buffered.length === 0) return false;
    this.buffered = Buffer.alloc(0);
    this.answer()("error incomplete line (no newline before the end of input)");
    return true;
  }

  // Its answers are all out: its place is free for another sender now.
  finish(): void {
    places.delete(this);
    this.closing = "finishing";
    finishWithout(this.connection);
  }
}

// Closing with the sender's bytes unread would reset the connection and lose
// the answers already written: end this side, read and discard the rest, and
// let go when the sender ends, or after 2 s.
function finishWithout(connection: Socket): void {
  connection.on("error", () => connection.destroy());
  connection.on("end", () => connection.destroy());
  connection.on("data", () => { /* discarded */ });
  connection.end();
  setTimeout(() => connection.destroy(), 2000).unref();
}

// ignoreBOM keeps a leading U+FEFF in the URL, to be refused like any format character.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function isStatusLine(line: Buffer): boolean {
  return line.length <= 7 && line.toString("latin1").replace(/\r$/, "") === "status";
}

// The answer to a "status" line (send.ts --status), which no URL can be.
function statusLine(): string {
  if (!desktop) return "error no desktop has said hello yet";
  const holdsPath = sameSocket(lstatSync(desktops.socketPath, { throwIfNoEntry: false }), desktops);
  const fields = new URLSearchParams({ desktop: desktop.name, since: desktop.since, runtime: runtimeName(), pid: String(process.pid),
    address: desktopAddress(process.env.SSH_CONNECTION), default: holdsPath ? "yes" : "no", ...(forwards ? { forwards } : {}) });
  return `ok ${fields.toString().replaceAll("&", " ")}`;
}

// The desktop's address as this host sees it: the first field of the
// SSH_CONNECTION sshd gave this session; send.ts routes by it.
function desktopAddress(connection: string | undefined): string {
  const address = connection?.split(" ")[0] ?? "";
  return /^[\w.:%-]{1,64}$/.test(address) ? address : "";
}

// Refuse here what this end can tell is wrong; the server checks everything again.
function forward(raw: Buffer, settle: (answer: string) => void): void {
  let url;
  try {
    url = strictUtf8.decode(raw).replace(/\r$/, "");
  } catch {
    return settle("error line is not valid UTF-8");
  }
  if (url === "") return settle("error empty line");
  if (url === "status") return settle(statusLine());
  if (/[\p{Cc}\p{Cf}\s]/u.test(url)) return settle("error URL contains whitespace or control characters");
  if (!URL.canParse(url)) return settle("error not a URL");
  const scheme = new URL(url).protocol.slice(0, -1);
  if (allowedSchemes && !allowedSchemes.has(scheme)) return settle(`error scheme "${scheme}" is not allowed`);
  const id = String(nextId++);
  pending.set(id, { resolve: settle });
  sendToServer(`open ${id} ${url}`);
}

main(process.argv.slice(2)).then(exitNow, crash);
