// Ensures --reconnect is back within seconds of the network's return however
// long it was gone, with a terminal that stays readable meanwhile: over real
// OpenSSH, the sshd port's packets dropped (a Wi-Fi that drops, a VPN that
// goes away) for 12 s, 45 s and 120 s, and sshd down with its sessions for
// 30 s (connections refused); with the fake ssh, the spacing of refused
// attempts and the lines they make. Signals end the server at once, in the
// middle of an attempt or of the wait between two. The outages are long, so
// the tests run concurrently (each sshd is in a network namespace of its own).
// Needs root, sshd, ip and iptables for the real ones: skipped without them,
// failing in CI.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import type { TestContext } from "node:test";
import { FAKE_SSH, childrenOf, isAlive, killIfAlive, opened, run, send, startScript, startSession, tempDir, waitForExit, waitUntil } from "./helpers.ts";
import type { Session } from "./helpers.ts";
import { commandOf, startSshd } from "./fixtures/sshd.ts";
import type { Sshd } from "./fixtures/sshd.ts";

// Connected again within this long of the network's (or sshd's) return.
const BACK_WITHIN_MS = 15_000;
// What the terminal may hold for the longest outage, from its start to the
// host being back: a screenful, not a line per attempt.
const MAX_OUTAGE_LINES = 10;
const PROMPT_MS = 1000;
// After a freeze or sleep (with the network changed meanwhile): the probe's 3 s, and a new
// connection, whose start a loaded machine stretches: the 10 s the issue asked for (12.7 s was
// seen in npm test with the other core busy while the test host's logins ran root's pyenv
// start-up, 5.2 s since they skip it).
const FROZEN_BACK_WITHIN_MS = 10_000;

async function reconnecting(t: TestContext): Promise<{ sshd: Sshd; session: Session } | undefined> {
  const sshd = await startSshd(t);
  if (!sshd) return undefined;
  const session = await startSession(t, ["--reconnect", "--keepalive", "1"],
    { ssh: sshd.sshWrapper, host: sshd.host, remoteCommand: sshd.remoteCommand });
  return { sshd, session };
}

/** Holds an outage for its stated duration: the test is about what a duration of it does. */
function hold(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

const connectedLines = (session: Session) => session.server.stderr.seen.filter((line) => / sshd-host: connected: client pid \d+/.test(line));

/** Waits for the next "connected" line; returns when it came. */
async function connectedAgain(session: Session, since: number, boundMs: number): Promise<number> {
  const before = connectedLines(session).length;
  const at = await waitUntil(() => connectedLines(session).length > before, boundMs + 10_000, "the host to be connected again");
  assert.ok(at - since < boundMs, `connected again after ${Math.round(at - since)} ms; the server said:\n${session.server.stderr.text()}`);
  return at;
}

/** send.ts on the remote host reaches the desktop again, through the new client. */
async function deliversAgain(t: TestContext, session: Session, url: string): Promise<void> {
  const result = await send(t, session, [url]);
  assert.equal(result.code, 0, result.stderr);
  await waitUntil(() => opened(session.browserLog).some(([, opened]) => opened === url), 5000, "the opener to run");
}

describe("--reconnect", { concurrency: true }, () => {
  for (const outageSeconds of [12, 45, 120]) {
    test(`over real ssh: packets dropped for ${outageSeconds} s, connected again within 15 s of their return; send.ts works`,
      { timeout: (outageSeconds + 60) * 1000 }, async (t) => {
        const real = await reconnecting(t);
        if (!real) return;
        const { sshd, session } = real;
        const from = session.server.stderr.seen.length;
        sshd.partition();
        const cut = performance.now();
        await session.server.stderr.waitFor(/ sshd-host: disconnected: /, 10_000);
        t.diagnostic(`lost noticed ${((performance.now() - cut) / 1000).toFixed(1)} s after the cut`);
        await hold(outageSeconds * 1000 - (performance.now() - cut));
        sshd.heal();
        const healed = performance.now();
        const back = await connectedAgain(session, healed, BACK_WITHIN_MS);
        t.diagnostic(`connected again ${((back - healed) / 1000).toFixed(1)} s after the network's return`);
        await session.server.stderr.waitFor(/ sshd-host: reconnected after \d/, 1000);
        await deliversAgain(t, session, `https://example.org/after-${outageSeconds}-s`);

        const outage = session.server.stderr.seen.slice(from).filter((line) => !/ (opened|\S+ \(pid \d+\) exited) /.test(line));
        t.diagnostic(`${outage.length} lines for the outage:`);
        outage.forEach((line) => t.diagnostic(line));
        assert.ok(outage.length <= MAX_OUTAGE_LINES, `${outage.length} lines for a ${outageSeconds} s outage:\n${outage.join("\n")}`);
        for (const line of outage) assert.doesNotMatch(line, / remote: /, "ssh's messages before a hello belong in the failure's line");
        if (outageSeconds === 120) {
          assert.ok(outage.some((line) => / sshd-host: still unreachable after 1 min( \d+ s)? \(attempt \d+\): ssh: connect to host 127\.0\.0\.1 port 2222: Connection timed out$/.test(line)),
            "no line now and then during the outage");
        }
      });
  }

  test("over real ssh: sshd down with its sessions for 30 s (refused), connected again within 15 s of its return; send.ts works",
    { timeout: 120_000 }, async (t) => {
      const real = await reconnecting(t);
      if (!real) return;
      const { sshd, session } = real;
      const from = session.server.stderr.seen.length;
      await sshd.stop();
      const stopped = performance.now();
      await session.server.stderr.waitFor(/ sshd-host: disconnected: /, 5000);
      await session.server.stderr.waitFor(/ sshd-host: cannot connect: ssh exited 255: ssh: connect to host 127\.0\.0\.1 port 2222: Connection refused \(attempt \d+, again in [\d.]+ s\)$/, 5000);
      await hold(30_000 - (performance.now() - stopped));
      await sshd.start();
      const started = performance.now();
      const back = await connectedAgain(session, started, BACK_WITHIN_MS);
      t.diagnostic(`connected again ${((back - started) / 1000).toFixed(1)} s after sshd's return`);
      await deliversAgain(t, session, "https://example.org/after-sshd-restart");
      const outage = session.server.stderr.seen.slice(from).filter((line) => !/ (opened|\S+ \(pid \d+\) exited) /.test(line));
      t.diagnostic(`${outage.length} lines for the outage:`);
      outage.forEach((line) => t.diagnostic(line));
      assert.ok(outage.length <= MAX_OUTAGE_LINES, outage.join("\n"));
    });

  test("over real ssh, default keepalive: frozen 20 s (SIGSTOP) while its connection is cut off, connected again within 10 s of SIGCONT; send.ts opens",
    { timeout: 90_000 }, async (t) => {
      const sshd = await startSshd(t, { separateDesktop: true });
      if (!sshd) return;
      // In a process group of its own, ssh with it, as a terminal's job or a service is.
      const session = await startSession(t, ["--reconnect"],
        { ssh: sshd.sshWrapper, host: sshd.host, remoteCommand: sshd.remoteCommand, detached: true });
      const from = session.server.stderr.seen.length;
      // That connection's packets vanish, both ways; a new connection (another source port) passes, as after a network change.
      const inRemote = (...command: string[]) => execFileSync("ip", ["netns", "exec", sshd.namespace, ...command], { encoding: "utf8" });
      const peers = inRemote("ss", "-Htn", "state", "established", "( sport = :2222 )").trim().split("\n");
      assert.equal(peers.length, 1, peers.join("\n"));
      const sourcePort = /:(\d+)\s*$/.exec(peers[0])![1];
      inRemote("iptables", "-A", "INPUT", "-p", "tcp", "--sport", sourcePort, "-j", "DROP");
      inRemote("iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", sourcePort, "-j", "DROP");
      process.kill(-session.server.pid, "SIGSTOP");
      t.after(() => killIfAlive(-session.server.pid, "SIGCONT"));
      await hold(20_000);
      process.kill(-session.server.pid, "SIGCONT");
      const continued = performance.now();
      const back = await connectedAgain(session, continued, FROZEN_BACK_WITHIN_MS).catch((error: Error) => {
        throw new Error(`${error.message}; the server said:\n${session.server.stderr.seen.slice(from).join("\n")}`);
      });
      t.diagnostic(`connected again ${((back - continued) / 1000).toFixed(1)} s after SIGCONT`);
      await deliversAgain(t, session, "https://example.org/after-a-freeze");
      const said = session.server.stderr.seen.slice(from);
      said.forEach((line) => t.diagnostic(line));
      assert.equal(said.filter((line) => / this server was frozen \(for \d+ s\): checking every connection$/.test(line)).length, 1, said.join("\n"));
      assert.ok(said.some((line) => / sshd-host: disconnected: no answer within 3 s to a ping after this server was frozen: connection lost$/.test(line)),
        said.join("\n"));
    });

  test("over real ssh: SIGTERM while an attempt hangs on dropped packets ends the server within 1 s, and its ssh", { timeout: 60_000 }, async (t) => {
    const real = await reconnecting(t);
    if (!real) return;
    const { sshd, session } = real;
    sshd.partition();
    await session.server.stderr.waitFor(/ sshd-host: reconnecting( in [\d.]+ s)? \(attempt 2\)$/, 10_000);
    // The attempt's ssh, waiting on a SYN that gets no answer.
    await waitUntil(() => childrenOf(session.server.pid).some((pid) => /^ssh -F /.test(commandOf(pid))), 5000, "the attempt's ssh");
    const ssh = childrenOf(session.server.pid).find((pid) => /^ssh -F /.test(commandOf(pid)))!;
    const signalled = performance.now();
    process.kill(session.server.pid, "SIGTERM");
    const exit = await waitForExit(session.server, PROMPT_MS + 2000, "server");
    assert.equal(exit.code, 143);
    assert.ok(exit.at - signalled < PROMPT_MS, `the server took ${Math.round(exit.at - signalled)} ms`);
    await waitUntil(() => !isAlive(ssh), PROMPT_MS, "the attempt's ssh to be gone");
  });

  test("refused attempts: 1 s apart doubling to 8 s, three lines then one at a minute; SIGINT in a wait ends the server at once",
    { timeout: 150_000 }, async (t) => {
      const dir = tempDir(t);
      const sshLog = join(dir, "ssh.log");
      const refused = "ssh: connect to host build1 port 22: Connection refused";
      const server = startScript(t, "server.ts", ["--reconnect", "--ssh", FAKE_SSH, "build1"],
        { env: { FAKE_SSH_FAIL: refused, FAKE_SSH_LOG: sshLog } });
      const summary = await server.stderr.waitFor(/ build1: still unreachable after /, 75_000);
      assert.match(summary, new RegExp(`Z build1: still unreachable after 1 min( \\d+ s)? \\(attempt \\d+\\): ${refused}$`));
      // At most as many attempts as the spacing allows in that minute.
      assert.ok(Number(/attempt (\d+)/.exec(summary)![1]) <= 11, summary);
      // When each ssh was started, in clock ticks (100 a second on Linux).
      const starts = readFileSync(sshLog, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line).startTicks as number);
      const gaps = starts.slice(1).map((at, i) => (at - starts[i]) / 100);
      t.diagnostic(`seconds between attempts: ${gaps.map((gap) => gap.toFixed(2)).join(", ")}`);
      // Never sooner than the promised spacing, in all (the host's load): each
      // start is the fake ssh's own, which load delays by a varying amount, so
      // a single gap can look short; over six gaps that is one delay at most.
      // How much later depends on this machine's load: the bench's to say.
      const spacings = [1, 2, 4, 8, 8, 8];
      const spanned = gaps.slice(0, spacings.length).reduce((sum, gap) => sum + gap, 0);
      assert.ok(spanned > spacings.reduce((sum, s) => sum + s, 0) - 1, `attempts 1 to 7 came ${spanned} s apart in all: ${gaps.join(", ")}`);
      const failed = (rest: string) => new RegExp(`^\\S+Z build1: cannot connect: ssh exited 255: ${refused} ${rest}$`);
      const lines = server.stderr.seen;
      assert.equal(lines.length, 4, lines.join("\n"));
      // The waits are what is left of the spacing: how much is left depends
      // on how long ssh took to fail, which load can stretch.
      const again = "again (in \\d+(\\.\\d)? s|at once)";
      assert.match(lines[0], failed(`\\(attempt 1, ${again}\\)`));
      assert.match(lines[1], failed(`\\(attempt 2, ${again}\\)`));
      assert.match(lines[2], failed(`\\(attempt 3, ${again}; from now on a line now and then\\)`));
      assert.equal(lines[3], summary);

      // The summary is said as an attempt fails: the wait for the next has begun.
      const signalled = performance.now();
      process.kill(server.pid, "SIGINT");
      const exit = await waitForExit(server, PROMPT_MS + 2000, "server");
      assert.equal(exit.code, 130);
      assert.ok(exit.at - signalled < PROMPT_MS, `the server took ${Math.round(exit.at - signalled)} ms`);
    });

  // Bounds on a hang, not on speed: 148 s was seen under load for this 2 min.
  test("an attempt whose client never says hello is given up after 2 min, saying so", { timeout: 240_000 }, async (t) => {
    // Reads the channel and never answers; ends when the fake ssh, and so its input, goes.
    const result = await run(t, "server.ts", ["--ssh", FAKE_SSH, "--remote-command", "exec cat >/dev/null", "build1"], { timeoutMs: 145_000 });
    assert.equal(result.code, 69);
    assert.match(result.stderr, /^\S+Z build1: cannot connect: no hello from the client within 120 s$/);
    // Not before the 2 min; the process's start under load may add seconds.
    assert.ok(result.ms > 119_000 && result.ms < 135_000, `gave up after ${Math.round(result.ms)} ms`);
  });
});
