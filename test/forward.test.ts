// Ensures URLs to the remote host's own loopback (a dev server, an OAuth
// loopback redirect) work on the desktop: server.ts forwards their port
// through the ssh connection it already owns, on both address families for a
// name, then opens them; a direct URL whose desktop port is taken gets another
// desktop port and is opened with only its port rewritten; a port it cannot
// forward is a refusal, never the desktop's own loopback.
// The first tests use the fake ssh (which cannot forward) to pin down which
// URLs are forwarded, with which ssh arguments; the rest run real OpenSSH
// with the remote side (sshd, client, send.ts, its HTTP server) and the desktop
// side (server.ts, its ssh, the browser) in two network namespaces joined by
// a veth pair, so that the two loopbacks are truly different. One of them has
// headless Chromium for the browser, so that its own resolution of localhost
// (::1 first) judges where a URL leads.
// The real-OpenSSH tests need root, sshd, ip and iptables, and the Chromium
// test the chromium package: skipped without them, failing in CI.

import assert from "node:assert/strict";
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { execFileSync } from "node:child_process";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { test } from "node:test";
import type { TestContext } from "node:test";
import {
  FAKE_BROWSER, HELLO_WAIT_MS, ROOT, isAlive, killAtEnd, needs, notOpened, opened, run, send, start, startSession, tempDir, waitForExit,
  waitUntil,
} from "./helpers.ts";
import type { Session } from "./helpers.ts";
import { commandOf, startSshd } from "./fixtures/sshd.ts";
import type { Sshd } from "./fixtures/sshd.ts";

const FETCH_BROWSER = join(ROOT, "test/fixtures/fetch-browser.mjs");
const TOKEN_SERVER = join(ROOT, "test/fixtures/token-server.mjs");
const CHROMIUM_BROWSER = join(ROOT, "test/fixtures/chromium-browser.sh");
const TOKEN = "token-from-the-remote-host";
const NO_FORWARD = "loopback URL: its port is on the remote host, and --no-forward-loopback is set";

/** The fake ssh's runs after the first (the connection): the forwards asked for. */
function forwardRequests(session: Session): string[][] {
  return readFileSync(session.sshLog, "utf8").split("\n").filter(Boolean).slice(1).map((line) => JSON.parse(line).args);
}

function controlPathOf(args: string[]): string {
  const option = args.find((arg) => arg.startsWith("ControlPath="));
  assert.ok(option, `no ControlPath in ${JSON.stringify(args)}`);
  return option.slice("ControlPath=".length);
}

test("ssh runs as the master of a control socket in a private 0700 directory, removed when the server exits", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, ["--keepalive", "7"]);
  const { args } = JSON.parse(readFileSync(session.sshLog, "utf8").split("\n")[0]);
  const controlPath = controlPathOf(args);
  assert.deepEqual(args.slice(0, 15), ["-T", "-o", "ServerAliveInterval=7", "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=10",
    "-o", "ControlMaster=yes", "-o", `ControlPath=${controlPath}`, "-o", "ControlPersist=no", "--", "testhost"]);
  assert.ok(controlPath.length < 90, `ControlPath "${controlPath}" is too long for a socket`);
  const directory = statSync(dirname(controlPath));
  assert.equal(directory.mode & 0o777, 0o700);
  assert.equal(directory.uid, process.getuid!());
  process.kill(session.server.pid, "SIGTERM");
  assert.equal((await waitForExit(session.server, 5000, "server")).code, 143);
  assert.equal(existsSync(dirname(controlPath)), false, "the control directory is left behind");
});

test("loopback URLs ask ssh for a relay to their port, where the forward connects; other URLs none; the fake ssh's failure is the reason, and nothing is left listening", { timeout: 120_000 }, async (t) => {
  const session = await startSession(t, ["--rate", "0"]);
  const controlPath = controlPathOf(JSON.parse(readFileSync(session.sshLog, "utf8").split("\n")[0]).args);
  // The relay each URL needs, from a Unix socket beside the control socket:
  // the fake ssh fails it, and that ends the URL, its desktop listeners undone.
  const forwarded: Array<[string, string]> = [
    // A literal address: connected to there on the remote host.
    ["http://127.0.0.1:18123/callback?code=abc", "127.0.0.1:18123"],
    ["http://[::1]:18080/x", "[::1]:18080"],
    ["https://127.1:18443/", "127.0.0.1:18443"],
    ["http://127.0.0.2:18000/", "127.0.0.2:18000"],
    ["http://[::ffff:127.0.0.1]:13005/", "127.0.0.1:13005"],
    ["http://[::ffff:127.0.0.2]:13006/", "127.0.0.2:13006"],
    // A name: sshd resolves localhost on the remote host.
    ["http://localhost:13000/", "localhost:13000"],
    ["http://localhost.:13001/", "localhost:13001"],
    ["http://app.localhost:13002/", "localhost:13002"],
    // The unspecified addresses: their program listens on every address.
    ["http://0.0.0.0:13003/", "localhost:13003"],
    ["http://[::]:13004/", "localhost:13004"],
    ["http://[::ffff:0.0.0.0]:13007/", "localhost:13007"],
    // Redirect targets, in https and http authorization URLs, any of their values.
    ["https://auth.example/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A18124%2Fcb", "127.0.0.1:18124"],
    ["https://auth.example/authorize?redirect_url=http%3A%2F%2Flocalhost%3A19000%2F", "localhost:19000"],
    ["http://idp.internal:8080/auth?redirect_uri=http%3A%2F%2Flocalhost%3A19001%2F", "localhost:19001"],
    ["https://auth.example/?redirect_uri=https%3A%2F%2Fexample.org%2F&redirect_uri=http%3A%2F%2F127.0.0.1%3A19002%2F", "127.0.0.1:19002"],
    ["https://api.example/oauth/authorize?oauth_callback=http%3A%2F%2F127.0.0.1%3A19003%2Fcb", "127.0.0.1:19003"],
  ];
  const urls = forwarded.map(([url]) => url);
  const refused = await send(t, session, ["--timeout", "60", ...urls], 90_000);
  assert.equal(refused.code, 65, refused.stderr);
  assert.equal(refused.stderr, notOpened(forwarded.map(([url, remote]) =>
    `send: refused ${JSON.stringify(url)}: cannot forward desktop port ${remote.split(":").at(-1)}: fake-ssh: expected [options] -- HOST COMMAND`), urls));
  // One relay asked for per URL, each at a path of its own (URLs whose hosts are looked up first come later).
  const requests = forwardRequests(session);
  assert.equal(requests.length, forwarded.length, "one relay asked for per URL");
  const relays = requests.map((args) => {
    assert.deepEqual([...args.slice(0, 5), ...args.slice(6)], ["-S", controlPath, "-O", "forward", "-L", "--", "testhost"]);
    assert.ok(args[5].startsWith(`${controlPath}.`), args[5]);
    return /^(\d+):(.*)$/.exec(args[5].slice(controlPath.length + 1))!;
  });
  assert.deepEqual(relays.map(([, n]) => Number(n)).sort((x, y) => x - y), forwarded.map((_, i) => i + 1));
  assert.deepEqual(relays.map(([, , remote]) => remote).sort(), forwarded.map(([, remote]) => remote).sort());
  // A refused URL leaves nothing listening on the desktop.
  for (const [url, remote] of forwarded) assert.equal(await connectsTo(Number(remote.split(":").at(-1)), "127.0.0.1"), "ECONNREFUSED", url);
  assert.doesNotMatch(session.server.stderr.text(), /forwarded desktop/);

  const openedAsTheyAre = [
    "https://example.org/?redirect_uri=https%3A%2F%2Fexample.org%2Fcb",
    "http://127.0.0.1.example.org:8000/",
    "http://localhost.example:8000/",
    "http://127.example.com:8000/",
    "http://[::2]:8000/",
    "http://[::ffff:8000:1]:8000/",
    "https://example.org:8443/?next=http%3A%2F%2F127.0.0.1%3A8000%2F",
  ];
  const result = await send(t, session, openedAsTheyAre);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => opened(session.browserLog).length === openedAsTheyAre.length, 5000, "the opener runs");
  assert.equal(forwardRequests(session).length, forwarded.length, "no forward for a URL that does not name the remote loopback");
});

test("an ssh master that never answers a forward request: refused after 10 s, the request killed, the host still served", { timeout: 40_000 }, async (t) => {
  const session = await startSession(t, [], { env: { FAKE_SSH_HANG_CONTROL: "1" } });
  const url = "http://127.0.0.1:8125/callback";
  const sending = send(t, session, ["--timeout", "30", url], 40_000);
  await waitUntil(() => forwardRequests(session).length === 1, 10_000, "the forward request");
  const request = Number(JSON.parse(readFileSync(session.sshLog, "utf8").split("\n")[1]).pid);
  // Should the server not be there to kill it, the test does.
  killAtEnd(t, request);
  const result = await sending;
  assert.equal(result.code, 65, result.stderr);
  assert.equal(result.stderr, notOpened([`send: refused ${JSON.stringify(url)}: forwarding desktop port 8125 took longer than 10 s`], [url]));
  assert.ok(result.ms >= 9900 && result.ms < 25_000, `refused after ${Math.round(result.ms)} ms`);
  await waitUntil(() => !isAlive(request), 5000, "the hung forward request to be killed");
  const after = await send(t, session, ["https://example.org/still-served"]);
  assert.equal(after.code, 0, after.stderr);
});

test("--forward-idle takes 1 to 86400 seconds; anything else is a usage error", { timeout: 60_000 }, async (t) => {
  const values = ["0", "0.5x", "86401", "soon", ""];
  const results = await Promise.all(values.map((value) => run(t, "server.ts", ["--forward-idle", value, "testhost"], { timeoutMs: 50_000 })));
  for (const [i, value] of values.entries()) {
    const result = results[i];
    assert.equal(result.code, 64, value);
    assert.equal(result.stderr, `server: --forward-idle needs a number of seconds from 1 to 86400, not "${value}"\nRun "server.ts --help" for usage.`);
  }
});

test("a URL that names more than 4 hosts to look up (its own and its redirect targets) is refused before any lookup or forward", { timeout: 30_000 }, async (t) => {
  const session = await startSession(t);
  const hosts = ["a", "b", "c", "d", "e"].map((name) => `http://${name}.urlserver-test.invalid:8000/`);
  const url = `https://auth.example/authorize?${hosts.map((host) => `redirect_uri=${encodeURIComponent(host)}`).join("&")}`;
  const result = await send(t, session, [url]);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened([`send: refused ${JSON.stringify(url)}: it names more than 4 hosts to look up (its own and its redirect targets)`], [url]));
  assert.deepEqual(forwardRequests(session), []);
});

test("a loopback URL on a port below 1024 is refused without asking ssh", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t);
  for (const [url, port] of [["http://localhost/", 80], ["https://127.0.0.1:1023/", 1023]] as const) {
    const result = await send(t, session, [url]);
    assert.equal(result.code, 65);
    assert.equal(result.stderr, notOpened([`send: refused ${JSON.stringify(url)}: loopback URL: its port ${port} is on the remote host, and ports below 1024 are not forwarded`], [url]));
  }
  assert.deepEqual(forwardRequests(session), []);
  assert.deepEqual(opened(session.browserLog), []);
});

test("--no-forward-loopback: ssh runs without control options, loopback URLs are refused, others open", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, ["--no-forward-loopback"]);
  const { args } = JSON.parse(readFileSync(session.sshLog, "utf8").split("\n")[0]);
  assert.deepEqual(args.slice(0, 9), ["-T", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=10",
    "--", "testhost"]);
  assert.equal(args.length, 10);
  const oauth = "https://auth.example/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A8124%2Fcb";
  for (const url of ["http://127.0.0.1:8123/cb", oauth]) {
    const result = await send(t, session, [url]);
    assert.equal(result.code, 65);
    assert.equal(result.stderr, notOpened([`send: refused ${JSON.stringify(url)}: ${NO_FORWARD}`], [url]));
  }
  const result = await send(t, session, ["https://example.org/"]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => opened(session.browserLog).length === 1, 5000, "the opener to run");
  assert.deepEqual(opened(session.browserLog), [[1, "https://example.org/"]]);
  assert.deepEqual(forwardRequests(session), []);
});

test("--local: the remote host is this one, so loopback URLs open as they are", { timeout: 20_000 }, async (t) => {
  const session = await startSession(t, [], { local: true });
  const result = await send(t, session, ["http://127.0.0.1:8123/cb", "http://localhost:3000/"]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => opened(session.browserLog).length === 2, 5000, "the opener runs");
  assert.deepEqual(opened(session.browserLog).map(([, url]) => url), ["http://127.0.0.1:8123/cb", "http://localhost:3000/"]);
});

// Over real OpenSSH, across two network namespaces.

type Fetched = { url: string; target: string; status?: number; body?: string; error?: string };

type Forwarding = { sshd: Sshd; session: Session; fetched: () => Fetched[] };

/** sshd in the remote namespace, server.ts with the fetching browser (or another) in the desktop's. */
async function forwardingSession(t: TestContext, extraArgs: string[] = [],
  options: { browser?: string; env?: Record<string, string>; hosts?: string } = {}): Promise<Forwarding | undefined> {
  const sshd = await startSshd(t, { separateDesktop: true });
  if (!sshd) return undefined;
  // The desktop's own hosts file: ip netns exec mounts /etc/netns/NAME/hosts over /etc/hosts.
  if (options.hosts) {
    const dir = join("/etc/netns", sshd.desktopNamespace);
    mkdirSync(dir, { recursive: true });
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "hosts"), options.hosts);
  }
  const fetchedLog = join(sshd.dir, "fetched");
  const session = await startSession(t, extraArgs, {
    ssh: sshd.sshWrapper, host: sshd.host, remoteCommand: sshd.remoteCommand, browser: options.browser ?? FETCH_BROWSER,
    serverVia: ["ip", "netns", "exec", sshd.desktopNamespace, process.execPath, "--import", "tsx", join(ROOT, "server.ts")],
    env: { FETCH_BROWSER_LOG: fetchedLog, ...options.env },
  });
  const fetched = () => existsSync(fetchedLog)
    ? readFileSync(fetchedLog, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line) as Fetched) : [];
  return { sshd, session, fetched };
}

/** Starts the token server on address:port (127.0.0.1 unless said) inside a namespace and waits until it listens. */
async function tokenServer(t: TestContext, namespace: string, port: number, token: string, address = "127.0.0.1") {
  const server = start(t, `token server ${namespace} ${address}:${port}`, "ip",
    ["netns", "exec", namespace, process.execPath, TOKEN_SERVER, String(port), token, address]);
  await server.stdout.waitFor(/^listening$/, 10_000);
  return server;
}

/** Runs send.ts on the remote side: in sshd's namespace, against the session's socket. */
/** send.ts on the remote host; boundMs: how long it may take to exit (more than any --timeout given). */
function sendFromRemote(t: TestContext, forwarding: Forwarding, urls: string[], boundMs = 20_000) {
  return sendInNamespace(t, forwarding.sshd.namespace, forwarding.session.env, urls, boundMs);
}

async function sendInNamespace(t: TestContext, namespace: string, env: Record<string, string>, urls: string[], boundMs = 20_000) {
  const proc = start(t, "send.ts", "ip", ["netns", "exec", namespace, process.execPath, "--import", "tsx", join(ROOT, "send.ts"), ...urls],
    { env, stdin: "ignore" });
  const exit = await waitForExit(proc, boundMs, "send.ts");
  await waitUntil(() => proc.stdout.ended && proc.stderr.ended, 2000, "send.ts's output to end");
  return { ...exit, stdout: proc.stdout.text(), stderr: proc.stderr.text() };
}

/** What the browser gets at address:port (127.0.0.1 unless said) in the desktop's namespace, fetched by the same fixture. */
async function fetchOnDesktop(t: TestContext, forwarding: Forwarding, port: number, address = "127.0.0.1"): Promise<Fetched> {
  const log = join(forwarding.sshd.dir, `probe-${port}-${performance.now()}`);
  const probe = start(t, "probe", "ip", ["netns", "exec", forwarding.sshd.desktopNamespace, process.execPath, FETCH_BROWSER, `http://${address}:${port}/`],
    { env: { FETCH_BROWSER_LOG: log }, stdin: "ignore" });
  await waitForExit(probe, 10_000, "the probe");
  return JSON.parse(readFileSync(log, "utf8"));
}

function forwardedLines(session: Session, port: number, what: "forwarded" | "already forwarded"): string[] {
  return session.server.stderr.seen.filter((line) => line.endsWith(`, port ${port} ${what}`));
}

test("over real ssh: a loopback callback URL reaches the remote host's server through a forwarded port", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8123, TOKEN);
  // The two loopbacks are apart: before the forward, the desktop has nothing there.
  assert.equal((await fetchOnDesktop(t, forwarding, 8123)).error, "ECONNREFUSED");

  const url = "http://127.0.0.1:8123/callback?code=abc";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stderr, "");
  await waitUntil(() => forwarding.fetched().length === 1, 10_000, "the browser to fetch");
  assert.deepEqual(forwarding.fetched(), [{ url, target: url, status: 200, body: TOKEN }]);
  assert.match(session.server.stderr.text(),
    /Z sshd-host: opened "http:\/\/127\.0\.0\.1:8123\/callback\?code=abc" with \S+fetch-browser\.mjs \(pid \d+, exit 0\), port 8123 forwarded$/m);
});

test("over real ssh: an [::1] URL is forwarded from the desktop's ::1, where the browser connects, to the remote host's ::1", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  // The program that wrote the URL listens where it says: on ::1 alone.
  await tokenServer(t, sshd.namespace, 8130, TOKEN, "::1");
  const url = "http://[::1]:8130/";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => forwarding.fetched().length === 1, 10_000, "the browser to fetch");
  assert.deepEqual(forwarding.fetched(), [{ url, target: url, status: 200, body: TOKEN }]);
  assert.equal(forwardedLines(session, 8130, "forwarded").length, 1);
});

test("over real ssh: IPv4-mapped loopback URLs reach the remote host's 127.0.0.1 and, for a program bound to 127.0.0.2 alone, its 127.0.0.2", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd } = forwarding;
  await tokenServer(t, sshd.namespace, 8141, TOKEN);
  await tokenServer(t, sshd.namespace, 8142, "token-from-127.0.0.2", "127.0.0.2");
  const urls = ["http://[::ffff:7f00:1]:8141/", "http://[::ffff:127.0.0.2]:8142/cb", "http://127.0.0.2:8142/direct"];
  for (const url of urls) {
    const result = await sendFromRemote(t, forwarding, [url]);
    assert.equal(result.code, 0, result.stderr);
  }
  await waitUntil(() => forwarding.fetched().length === urls.length, 10_000, "the browser to fetch each URL");
  assert.deepEqual(forwarding.fetched().map(({ target, body, error }) => [target, body ?? error]), [
    ["http://[::ffff:7f00:1]:8141/", TOKEN],
    ["http://[::ffff:7f00:2]:8142/cb", "token-from-127.0.0.2"],
    ["http://127.0.0.2:8142/direct", "token-from-127.0.0.2"],
  ]);
});

test("over real ssh: an OAuth authorization URL forwards its redirect_uri's port, and the redirect reaches the remote host", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8124, TOKEN);
  const url = "https://auth.example/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A8124%2Fcb";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => forwarding.fetched().length === 1, 10_000, "the browser to fetch");
  assert.deepEqual(forwarding.fetched(), [{ url, target: "http://127.0.0.1:8124/cb", status: 200, body: TOKEN }]);
  assert.equal(forwardedLines(session, 8124, "forwarded").length, 1);
});

test("over real ssh: an http authorization URL and an oauth_callback are forwarded and reach the remote host; a URL with two loopback redirect targets is refused, forwarding nothing", { timeout: 60_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  for (const port of [8143, 8144, 8145, 8146]) await tokenServer(t, sshd.namespace, port, `${TOKEN}-${port}`);
  const urls = [
    // A local identity provider speaks http.
    "http://idp.internal:8080/auth?client_id=x&redirect_uri=http%3A%2F%2Flocalhost%3A8143%2Fcb",
    "https://api.example/oauth/authorize?oauth_token=t&oauth_callback=http%3A%2F%2F127.0.0.1%3A8144%2Fcb",
  ];
  for (const url of urls) {
    const result = await sendFromRemote(t, forwarding, [url]);
    assert.equal(result.code, 0, result.stderr);
  }
  await waitUntil(() => forwarding.fetched().length === urls.length, 10_000, "the browser to fetch each URL");
  assert.deepEqual(forwarding.fetched().map(({ target, body, error }) => [target, body ?? error]), [
    ["http://localhost:8143/cb", `${TOKEN}-8143`],
    ["http://127.0.0.1:8144/cb", `${TOKEN}-8144`],
  ]);
  // At most one redirect target per URL: a second would be a port the remote side picks for nothing.
  const two = "https://auth.example/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A8145%2Fa&redirect_uri=http%3A%2F%2F127.0.0.1%3A8146%2Fb";
  const refused = await sendFromRemote(t, forwarding, [two]);
  assert.equal(refused.code, 65);
  assert.equal(refused.stderr, notOpened([`send: refused ${JSON.stringify(two)}: it has 2 loopback redirect targets (port 8145, port 8146): at most one is forwarded`], [two]));
  for (const port of [8145, 8146]) assert.equal((await fetchOnDesktop(t, forwarding, port)).error, "ECONNREFUSED");
  assert.doesNotMatch(session.server.stderr.text(), /forwarded desktop 127\.0\.0\.1:814[56]/);
});

test("over real ssh: a direct URL whose desktop port is taken opens on another, rewritten in its port alone; an OAuth redirect to that port is refused", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8125, TOKEN);
  await tokenServer(t, sshd.desktopNamespace, 8125, "the desktop's own server");
  const url = "http://127.0.0.1:8125/callback?code=abc";
  const first = await sendFromRemote(t, forwarding, [url]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.stderr, "");
  await waitUntil(() => forwarding.fetched().length === 1, 10_000, "the browser to fetch");
  const moved = "http://127.0.0.1:8126/callback?code=abc";
  assert.deepEqual(forwarding.fetched(), [{ url: moved, target: moved, status: 200, body: TOKEN }]);
  assert.match(session.server.stderr.text(), new RegExp(`Z sshd-host: opened "${escapeRegExp(moved)}" with \\S+fetch-browser\\.mjs \\(pid \\d+, exit 0\\), ` +
    "desktop port 8125 is in use: forwarded desktop port 8126 to remote port 8125$", "m"));

  // Later URLs to the same remote port: the same desktop port.
  const again = await sendFromRemote(t, forwarding, ["http://127.0.0.1:8125/again"]);
  assert.equal(again.code, 0, again.stderr);
  await waitUntil(() => forwarding.fetched().length === 2, 10_000, "the browser to fetch again");
  assert.deepEqual(forwarding.fetched()[1], { url: "http://127.0.0.1:8126/again", target: "http://127.0.0.1:8126/again", status: 200, body: TOKEN });
  assert.match(session.server.stderr.text(), /Z sshd-host: opened "http:\/\/127\.0\.0\.1:8126\/again" with \S+ \(pid \d+, exit 0\), desktop port 8126 already forwarded to remote port 8125$/m);

  // A provider redirects to exactly the registered port: no other will do.
  const oauth = "https://auth.example/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A8125%2Fcb";
  const refused = await sendFromRemote(t, forwarding, [oauth]);
  assert.equal(refused.code, 65);
  assert.equal(refused.stderr, notOpened([`send: refused ${JSON.stringify(oauth)}: desktop port 8125 is in use`], [oauth]));
  assert.match(session.server.stderr.text(), new RegExp(`Z sshd-host: refused ${escapeRegExp(JSON.stringify(oauth))}: desktop port 8125 is in use$`, "m"));
  assert.equal(forwarding.fetched().length, 2, "the browser was run for the refused URL");
});

test("over real ssh: localhost is forwarded on 127.0.0.1 and ::1; with the desktop's own program on [::1]:P it opens on another port, or is refused", { timeout: 60_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8150, TOKEN);
  await tokenServer(t, sshd.namespace, 8152, TOKEN);
  await tokenServer(t, sshd.desktopNamespace, 8150, "the desktop's own server", "::1");

  const free = await sendFromRemote(t, forwarding, ["http://localhost:8152/"]);
  assert.equal(free.code, 0, free.stderr);
  assert.equal(forwardedLines(session, 8152, "forwarded").length, 1);
  for (const address of ["127.0.0.1", "[::1]"]) assert.equal((await fetchOnDesktop(t, forwarding, 8152, address)).body, TOKEN, address);

  const url = "http://localhost:8150/?token=abc";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(session.server.stderr.text(), /Z sshd-host: opened "http:\/\/localhost:8151\/\?token=abc" with \S+ \(pid \d+, exit 0\), desktop port 8150 is in use: forwarded desktop port 8151 to remote port 8150$/m);
  for (const address of ["127.0.0.1", "[::1]"]) assert.equal((await fetchOnDesktop(t, forwarding, 8151, address)).body, TOKEN, address);
  // Half a forward is none: 127.0.0.1:8150, free, was given back when ::1 turned out taken.
  assert.equal((await fetchOnDesktop(t, forwarding, 8150, "127.0.0.1")).error, "ECONNREFUSED");
  // The master's own words for the port it could not listen on (bind, cannot
  // listen, mux_master_process_open_fwd ... failed) are no error here, nor remote output.
  assert.deepEqual(session.server.stderr.seen.filter((line) => / (remote|ssh): /.test(line)), []);
  assert.equal((await fetchOnDesktop(t, forwarding, 8150, "[::1]")).body, "the desktop's own server");

  const oauth = "https://auth.example/authorize?redirect_uri=http%3A%2F%2Flocalhost%3A8150%2Fcb";
  const refused = await sendFromRemote(t, forwarding, [oauth]);
  assert.equal(refused.code, 65);
  assert.equal(refused.stderr, notOpened([`send: refused ${JSON.stringify(oauth)}: desktop port 8150 is in use`], [oauth]));
});

test("over real ssh, with Chromium as the browser: http://localhost:P/ shows the remote host's page, not the desktop's own program on [::1]:P", { timeout: 120_000 }, async (t) => {
  if (!needs(t, chromiumMissing())) return;
  const dir = tempDir(t);
  const domLog = join(dir, "dom");
  const forwarding = await forwardingSession(t, [], { browser: CHROMIUM_BROWSER, env: { CHROMIUM_DOM_LOG: domLog } });
  if (!forwarding) return;
  const { sshd } = forwarding;
  await tokenServer(t, sshd.namespace, 8160, TOKEN);
  await tokenServer(t, sshd.desktopNamespace, 8160, "the desktop's own server", "::1");
  const result = await sendFromRemote(t, forwarding, ["http://localhost:8160/"]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => existsSync(domLog) && readFileSync(domLog, "utf8").endsWith("\n"), 90_000, "Chromium to load the page");
  const [status, url, dom] = readFileSync(domLog, "utf8").trimEnd().split("\t");
  t.diagnostic(`Chromium loaded ${url}: ${dom}`);
  assert.match(dom, new RegExp(`<pre[^>]*>${TOKEN}</pre>`), `Chromium showed ${url}: ${dom}`);
  assert.equal(url, "http://localhost:8161/");
  assert.equal(status, "0");
});

test("over real ssh: a second URL to the same port reuses the forward, whichever loopback form it uses", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8126, TOKEN);
  for (const url of ["http://localhost:8126/one", "http://localhost:8126/two", "http://127.0.0.1:8126/three"]) {
    const result = await sendFromRemote(t, forwarding, [url]);
    assert.equal(result.code, 0, result.stderr);
  }
  await waitUntil(() => forwarding.fetched().length === 3, 10_000, "the browser to fetch three times");
  assert.deepEqual(forwarding.fetched().map(({ body }) => body), [TOKEN, TOKEN, TOKEN]);
  assert.equal(forwardedLines(session, 8126, "forwarded").length, 1, "one forward made");
  assert.equal(forwardedLines(session, 8126, "already forwarded").length, 2, "the forward reused");
});

test("over real ssh: at most 32 forwarded ports per connection; the 33rd is refused, and forwarded ports are still reused", { timeout: 90_000 }, async (t) => {
  const forwarding = await forwardingSession(t, ["--rate", "0"], { browser: FAKE_BROWSER });
  if (!forwarding) return;
  const { session } = forwarding;
  const urls = Array.from({ length: 33 }, (_, i) => `http://127.0.0.1:${9101 + i}/`);
  // 32 forwards asked of the master one by one: its own --timeout, not the usual 20 s (exceeded once under load).
  const result = await sendFromRemote(t, forwarding, ["--timeout", "60", ...urls], 70_000);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened([`send: refused "http://127.0.0.1:9133/": too many forwarded ports for this connection`], ["http://127.0.0.1:9133/"]));
  await waitUntil(() => opened(session.browserLog).length === 32, 10_000, "the opener to run 32 times");
  // Each once; the openers run side by side, so their records may come in any order.
  assert.deepEqual(opened(session.browserLog).map(([, url]) => url).sort(), urls.slice(0, 32).sort());

  // Another family on a port already counted is no new port; an OAuth redirect to a new one is.
  const oauth = "https://auth.example/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A9134%2Fcb";
  const more = await sendFromRemote(t, forwarding, ["http://127.0.0.1:9101/again", "http://localhost:9102/", oauth]);
  assert.equal(more.code, 65);
  assert.equal(more.stderr, notOpened([`send: refused ${JSON.stringify(oauth)}: too many forwarded ports for this connection`], [oauth]));
  assert.equal(forwardedLines(session, 9101, "already forwarded").length, 1);
  assert.equal(forwardedLines(session, 9102, "forwarded").length, 2);
});

test("over real ssh: the forward and the control directory are gone once the server has exited", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8127, TOKEN);
  const controlPath = /ControlPath=(\S+)/.exec(commandOf(session.sshPid))?.[1];
  assert.ok(controlPath, `no ControlPath in "${commandOf(session.sshPid)}"`);
  const result = await sendFromRemote(t, forwarding, ["http://127.0.0.1:8127/cb"]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal((await fetchOnDesktop(t, forwarding, 8127)).body, TOKEN);

  process.kill(session.server.pid, "SIGTERM");
  assert.equal((await waitForExit(session.server, 5000, "server")).code, 143);
  // The forward lives in the ssh master, which the server has told to go.
  await waitUntil(() => !isAlive(session.sshPid), 5000, "the ssh master to exit");
  assert.equal((await fetchOnDesktop(t, forwarding, 8127)).error, "ECONNREFUSED");
  assert.equal(existsSync(dirname(controlPath)), false, "the control directory is left behind");
});

test("over real ssh: --no-forward-loopback refuses a loopback URL rather than open the desktop's own port", { timeout: 40_000 }, async (t) => {
  const forwarding = await forwardingSession(t, ["--no-forward-loopback"]);
  if (!forwarding) return;
  const { sshd } = forwarding;
  await tokenServer(t, sshd.namespace, 8128, TOKEN);
  await tokenServer(t, sshd.desktopNamespace, 8128, "the desktop's own server");
  const url = "http://127.0.0.1:8128/callback?code=abc";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened([`send: refused ${JSON.stringify(url)}: ${NO_FORWARD}`], [url]));
  assert.deepEqual(forwarding.fetched(), [], "the browser was run");
});

test("over real ssh: two hosts cannot both have one desktop port: the second host's direct URL gets another, its OAuth redirect is refused", { timeout: 40_000 }, async (t) => {
  const sshd = await startSshd(t, { separateDesktop: true });
  if (!sshd) return;
  const fetchedLog = join(sshd.dir, "fetched");
  // The second host's session has URLSERVER_TEST_HOST=2: its client listens on sock2.
  const remoteCommand = `cd ${ROOT} && URLSERVER_SOCKET=${sshd.dir}/sock$URLSERVER_TEST_HOST exec ${process.execPath} --import tsx client.ts`;
  const server = start(t, "server.ts", "ip", ["netns", "exec", sshd.desktopNamespace, process.execPath, "--import", "tsx", join(ROOT, "server.ts"),
    "--ssh", sshd.sshWrapper, "--remote-command", remoteCommand, "--browser", FETCH_BROWSER, "sshd-host", "sshd-host2"],
    { env: { FETCH_BROWSER_LOG: fetchedLog, TMPDIR: sshd.dir } });
  for (const host of ["sshd-host", "sshd-host2"]) {
    const hello = await server.stderr.waitFor(new RegExp(`Z ${host}: connected: client pid \\d+`), HELLO_WAIT_MS);
    const clientPid = Number(/client pid (\d+)/.exec(hello)![1]);
    killAtEnd(t, clientPid);
  }
  await tokenServer(t, sshd.namespace, 8129, TOKEN);
  const url = "http://127.0.0.1:8129/cb";
  const viaFirst = await sendInNamespace(t, sshd.namespace, { URLSERVER_SOCKET: join(sshd.dir, "sock") }, [url]);
  assert.equal(viaFirst.code, 0, viaFirst.stderr);
  const viaSecond = await sendInNamespace(t, sshd.namespace, { URLSERVER_SOCKET: join(sshd.dir, "sock2") }, [url]);
  assert.equal(viaSecond.code, 0, viaSecond.stderr);
  const oauth = "https://auth.example/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A8129%2Fcb";
  const oauthViaSecond = await sendInNamespace(t, sshd.namespace, { URLSERVER_SOCKET: join(sshd.dir, "sock2") }, [oauth]);
  assert.equal(oauthViaSecond.code, 65);
  assert.equal(oauthViaSecond.stderr, notOpened([`send: refused ${JSON.stringify(oauth)}: desktop port 8129 is in use`], [oauth]));
  assert.match(server.stderr.text(), /Z sshd-host: opened "http:\/\/127\.0\.0\.1:8129\/cb" with \S+ \(pid \d+, exit 0\), port 8129 forwarded$/m);
  assert.match(server.stderr.text(),
    /Z sshd-host2: opened "http:\/\/127\.0\.0\.1:8130\/cb" with \S+ \(pid \d+, exit 0\), desktop port 8129 is in use: forwarded desktop port 8130 to remote port 8129$/m);
  assert.match(server.stderr.text(), /Z sshd-host2: refused "https:\/\/auth\.example\/authorize\?redirect_uri=\S+": desktop port 8129 is in use$/m);
});

// A forward lives only as long as the URL that needed it.

/** The TCP sockets listening in a namespace (ss -ltn), sorted. */
function listening(namespace: string): string[] {
  return execFileSync("ip", ["netns", "exec", namespace, "ss", "-ltnH"], { encoding: "utf8" })
    .split("\n").filter(Boolean).map((line) => line.trim().split(/\s+/)[3]).sort();
}

test("over real ssh, a hostile remote: a URL naming 34 loopback redirect ports is refused saying so and adds no desktop listener; a direct forward is gone after --forward-idle", { timeout: 90_000 }, async (t) => {
  const forwarding = await forwardingSession(t, ["--forward-idle", "5"]);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8170, TOKEN);
  const before = listening(sshd.desktopNamespace);
  const ports = Array.from({ length: 34 }, (_, i) => 9201 + i);
  const hostile = `https://auth.example/authorize?${ports.map((port) => `redirect_uri=http%3A%2F%2F127.0.0.1%3A${port}%2F`).join("&")}`;
  const refused = await sendFromRemote(t, forwarding, [hostile]);
  assert.equal(refused.code, 65);
  assert.match(refused.stderr, /: it has 34 loopback redirect targets \(port 9201, port 9202, .*, port 9234\): at most one is forwarded\n/);
  assert.deepEqual(listening(sshd.desktopNamespace), before, "the refused URL left desktop ports listening");
  assert.doesNotMatch(session.server.stderr.text(), /forwarded desktop/);

  const url = "http://localhost:8170/";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => forwarding.fetched().length === 1, 10_000, "the browser to fetch");
  assert.equal(forwarding.fetched()[0].body, TOKEN);
  await session.server.stderr.waitFor(/Z sshd-host: forwarded desktop 127\.0\.0\.1:8170 and \[::1\]:8170 to remote localhost:8170, for "http:\/\/localhost:8170\/"$/, 1000);
  await session.server.stderr.waitFor(
    /Z sshd-host: released desktop 127\.0\.0\.1:8170 and \[::1\]:8170 \(to remote localhost:8170, for "http:\/\/localhost:8170\/"\): no connection for 5\.0 s$/, 30_000);
  assert.deepEqual(listening(sshd.desktopNamespace), before, "the idle forward is still listening");
  // A desktop client on the released port is refused, never carried to the remote host.
  for (const address of ["127.0.0.1", "[::1]"]) assert.equal((await fetchOnDesktop(t, forwarding, 8170, address)).error, "ECONNREFUSED", address);
});

// A remote program that accepts connections and holds them, saying "accepted" for each.
const HOLDING_SERVER = 'require("net").createServer((c) => { c.on("error", () => {}); console.log("accepted"); })' +
  '.listen(Number(process.argv[1]), "127.0.0.1", () => console.log("listening"));';
// A desktop program that opens a connection to 127.0.0.1:PORT on "open" and closes the Kth on "close K", saying each.
const DESKTOP_CONNECTIONS = 'const net = require("net"); const all = [];' +
  'require("readline").createInterface({ input: process.stdin }).on("line", (line) => { const [what, k] = line.split(" ");' +
  '  if (what === "close") return all[Number(k)].destroy(); const i = all.length; const c = net.connect(Number(process.argv[1]), "127.0.0.1"); all.push(c);' +
  '  c.on("connect", () => console.log(`connected ${i}`)); c.on("error", () => {}); c.on("close", () => console.log(`closed ${i}`)); });';

test("over real ssh: at most 64 desktop connections are carried at once; the 65th is closed without reaching the remote host, and a freed place carries again", { timeout: 90_000 }, async (t) => {
  const forwarding = await forwardingSession(t, [], { browser: FAKE_BROWSER });
  if (!forwarding) return;
  const { sshd } = forwarding;
  const holder = start(t, "holding server", "ip", ["netns", "exec", sshd.namespace, process.execPath, "-e", HOLDING_SERVER, "8191"]);
  await holder.stdout.waitFor(/^listening$/, 10_000);
  const result = await sendFromRemote(t, forwarding, ["http://127.0.0.1:8191/"]);
  assert.equal(result.code, 0, result.stderr);
  const desktop = start(t, "desktop connections", "ip", ["netns", "exec", sshd.desktopNamespace, process.execPath, "-e", DESKTOP_CONNECTIONS, "8191"]);
  const accepted = () => holder.stdout.seen.filter((line) => line === "accepted").length;
  for (let i = 0; i < 64; i++) desktop.child.stdin!.write("open\n");
  await waitUntil(() => accepted() === 64, 30_000, `64 connections carried to the remote host (${accepted()})`);
  desktop.child.stdin!.write("open\n");
  await desktop.stdout.waitFor(/^closed 64$/, 10_000);
  assert.ok(desktop.stdout.seen.filter((line) => line.startsWith("closed")).length === 1, desktop.stdout.text());
  desktop.child.stdin!.write("close 0\n");
  await desktop.stdout.waitFor(/^closed 0$/, 10_000);
  // The desktop sees its close at once; the server frees the place when it has seen it too.
  await waitUntil(() => {
    if (accepted() === 65) return true;
    const tries = desktop.stdout.seen.filter((line) => /^connected /.test(line)).length;
    const closed = desktop.stdout.seen.filter((line) => /^closed /.test(line)).length;
    if (tries === closed + 63) desktop.child.stdin!.write("open\n");
    return false;
  }, 20_000, "a connection carried again after one closed");
  assert.equal(accepted(), 65, "the 65th connection reached the remote host");
});

test("over real ssh: a callback's forward is released once its callback has been served, in the log and in --log; the port then refuses connections", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const auditLog = join(dir, "urls.log");
  const forwarding = await forwardingSession(t, ["--log", auditLog]);
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8174, TOKEN);
  const url = "https://auth.example/authorize?client_id=x&redirect_uri=http%3A%2F%2F127.0.0.1%3A8174%2Fcb";
  const result = await sendFromRemote(t, forwarding, [url]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => forwarding.fetched().length === 1, 10_000, "the browser to fetch");
  assert.equal(forwarding.fetched()[0].body, TOKEN);
  const shown = escapeRegExp(JSON.stringify(url));
  await session.server.stderr.waitFor(new RegExp(`Z sshd-host: forwarded desktop 127\\.0\\.0\\.1:8174 to remote 127\\.0\\.0\\.1:8174, for ${shown}$`), 1000);
  await session.server.stderr.waitFor(
    new RegExp(`Z sshd-host: released desktop 127\\.0\\.0\\.1:8174 \\(to remote 127\\.0\\.0\\.1:8174, for ${shown}\\): its callback was served$`), 10_000);
  assert.equal((await fetchOnDesktop(t, forwarding, 8174)).error, "ECONNREFUSED");
  const entries = readFileSync(auditLog, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line));
  const forwards = entries.filter((entry) => entry.forward).map(({ time: _time, ...entry }) => entry);
  assert.deepEqual(forwards, [
    { host: "sshd-host", url, forward: "made", desktop: ["127.0.0.1:8174"], remote: "127.0.0.1:8174" },
    { host: "sshd-host", url, forward: "released", desktop: ["127.0.0.1:8174"], remote: "127.0.0.1:8174", reason: "its callback was served" },
  ]);
});

test("over real ssh: send.ts --status and SIGUSR2 list the live forwards; a URL the opener refuses takes its forward with it", { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const opener = join(dir, "opener");
  // Opens the first URL (as the fetching browser), fails the second (as xdg-open without a browser).
  writeFileSync(opener, `#!/bin/sh\ncase "$1" in *8176*) exit 3;; esac\nexec ${process.execPath} ${FETCH_BROWSER} "$@"\n`, { mode: 0o755 });
  const forwarding = await forwardingSession(t, [], { browser: opener });
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  await tokenServer(t, sshd.namespace, 8175, TOKEN);
  await tokenServer(t, sshd.namespace, 8176, TOKEN);
  const before = await sendFromRemote(t, forwarding, ["--status"]);
  assert.equal(before.code, 0, before.stderr);
  assert.doesNotMatch(before.stdout, /forwarded/);
  const result = await sendFromRemote(t, forwarding, ["http://127.0.0.1:8175/"]);
  assert.equal(result.code, 0, result.stderr);
  const status = await sendFromRemote(t, forwarding, ["--status"]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /^connected to desktop .*\ndesktop ports forwarded to this host: 8175$/);
  process.kill(session.server.pid, "SIGUSR2");
  await session.server.stderr.waitFor(/Z sshd-host: live forward: desktop 127\.0\.0\.1:8175 to remote 127\.0\.0\.1:8175, for "http:\/\/127\.0\.0\.1:8175\/" \(direct, \d+ connections open\)$/, 5000);

  const refusedUrl = "http://127.0.0.1:8176/";
  const refused = await sendFromRemote(t, forwarding, [refusedUrl]);
  assert.equal(refused.code, 65);
  await session.server.stderr.waitFor(/Z sshd-host: released desktop 127\.0\.0\.1:8176 \(to remote 127\.0\.0\.1:8176, for "http:\/\/127\.0\.0\.1:8176\/"\): its URL was refused$/, 5000);
  assert.equal((await fetchOnDesktop(t, forwarding, 8176)).error, "ECONNREFUSED");
  const after = await sendFromRemote(t, forwarding, ["--status"]);
  assert.match(after.stdout, /\ndesktop ports forwarded to this host: 8175$/);
});

// Loopback names are resolved on the desktop, not guessed.

/** A desktop hosts file as Debian writes it, plus a name of the test's own and the desktop's host name on 127.0.1.1. */
const HOSTS = `127.0.0.1 localhost localhost.localdomain localhost4
::1 localhost ip6-localhost ip6-loopback localhost6
127.0.1.1 ${hostname()}
127.0.0.1 dev.urlserver-test.example
`;

test("over real ssh: names the desktop resolves to its loopback (its hosts file, its own host name) are forwarded where it resolves them, and reach the remote host", { timeout: 90_000 }, async (t) => {
  const forwarding = await forwardingSession(t, ["--rate", "0"], { hosts: HOSTS });
  if (!forwarding) return;
  const { sshd, session } = forwarding;
  const names: Array<[string, number, string]> = [
    ["dev.urlserver-test.example", 8180, "127.0.0.1:8180"],
    [hostname(), 8181, "127.0.1.1:8181"],
    ["localhost.localdomain", 8182, "127.0.0.1:8182"],
    ["localhost4", 8183, "127.0.0.1:8183"],
    ["localhost6", 8184, "[::1]:8184"],
    ["ip6-localhost", 8185, "[::1]:8185"],
    ["ip6-loopback", 8186, "[::1]:8186"],
  ];
  for (const [name, port, desktop] of names) {
    await tokenServer(t, sshd.namespace, port, `${TOKEN}-${port}`);
    const url = `http://${name}:${port}/`;
    const result = await sendFromRemote(t, forwarding, [url]);
    assert.equal(result.code, 0, result.stderr);
    await session.server.stderr.waitFor(new RegExp(`Z sshd-host: forwarded desktop ${escapeRegExp(desktop)} to remote localhost:${port}, for "${escapeRegExp(url)}"$`), 1000);
  }
  await waitUntil(() => forwarding.fetched().length === names.length, 20_000, "the browser to fetch each URL");
  assert.deepEqual(forwarding.fetched().map(({ body, error }) => body ?? error), names.map(([, port]) => `${TOKEN}-${port}`));
});

test("over real ssh: --no-forward-loopback refuses every name the desktop resolves to its loopback, and opens a name it cannot resolve", { timeout: 60_000 }, async (t) => {
  const forwarding = await forwardingSession(t, ["--no-forward-loopback", "--rate", "0"], { hosts: HOSTS });
  if (!forwarding) return;
  const urls = ["dev.urlserver-test.example", hostname(), "localhost.localdomain", "localhost4", "localhost6", "ip6-localhost", "ip6-loopback"]
    .map((name) => `http://${name}:8190/`);
  const result = await sendFromRemote(t, forwarding, urls);
  assert.equal(result.code, 65);
  assert.equal(result.stderr, notOpened(urls.map((url) => `send: refused ${JSON.stringify(url)}: ${NO_FORWARD}`), urls));
  const unknown = await sendFromRemote(t, forwarding, ["http://nowhere.urlserver-test.invalid:8190/"]);
  assert.equal(unknown.code, 0, unknown.stderr);
});

/** Whether a TCP connection to address:port here is accepted ("connected"), or the error code. */
function connectsTo(port: number, address: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, address);
    socket.on("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.on("error", (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** What the tests lack to run Chromium, or undefined. */
function chromiumMissing(): string | undefined {
  const found = (process.env.PATH ?? "").split(":").some((dir) => {
    try {
      accessSync(join(dir || ".", "chromium"), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  return found ? undefined : "chromium (Debian: chromium)";
}

/** text, with the characters that mean something in a regular expression escaped. */
function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
