// Ensures the server tells a suspend, a freeze and a network change from a
// quiet interval, given injected clocks and interface lists: what makes it
// probe every connection at once rather than wait out the keepalive
// (test/sshd.test.ts shows the whole over real OpenSSH, frozen and cut off).

import assert from "node:assert/strict";
import type { networkInterfaces } from "node:os";
import { test } from "node:test";
import { desktopAddresses, wakeReason } from "../server.ts";

const CHECK_MS = 2000;
const start = { wallMs: 1_764_000_000_000, monotonicMs: 50_000, addresses: "192.168.1.20 fe80::1" };
const later = (wallMs: number, monotonicMs: number, addresses = start.addresses) =>
  ({ wallMs: start.wallMs + wallMs, monotonicMs: start.monotonicMs + monotonicMs, addresses });

test("a quiet interval, or one a loaded machine made a few seconds late, is nothing", { timeout: 5000 }, () => {
  assert.equal(wakeReason(start, later(CHECK_MS, CHECK_MS), CHECK_MS), undefined);
  assert.equal(wakeReason(start, later(CHECK_MS + 3000, CHECK_MS + 3000), CHECK_MS), undefined);
  // NTP's small corrections.
  assert.equal(wakeReason(start, later(CHECK_MS + 800, CHECK_MS), CHECK_MS), undefined);
});

test("a suspend: the wall clock ran on while the monotonic clock stood still", { timeout: 5000 }, () => {
  assert.equal(wakeReason(start, later(CHECK_MS + 300_000, CHECK_MS + 5), CHECK_MS), "the desktop slept (for 5 min)");
});

test("a freeze: the check came much later than due, both clocks agreeing", { timeout: 5000 }, () => {
  assert.equal(wakeReason(start, later(CHECK_MS + 20_000, CHECK_MS + 20_000), CHECK_MS), "this server was frozen (for 20 s)");
});

test("a network change: the desktop's addresses are another set, whatever the order they are listed in", { timeout: 5000 }, () => {
  const home: ReturnType<typeof networkInterfaces> = {
    lo: [{ address: "127.0.0.1", netmask: "255.0.0.0", family: "IPv4", mac: "00:00:00:00:00:00", internal: true, cidr: "127.0.0.1/8" }],
    wlan0: [
      { address: "192.168.1.20", netmask: "255.255.255.0", family: "IPv4", mac: "aa:bb:cc:dd:ee:ff", internal: false, cidr: "192.168.1.20/24" },
      { address: "fe80::1", netmask: "ffff:ffff:ffff:ffff::", family: "IPv6", mac: "aa:bb:cc:dd:ee:ff", internal: false, cidr: "fe80::1/64", scopeid: 3 },
    ],
  };
  const reordered = { wlan0: [...home.wlan0!].reverse(), lo: home.lo };
  const cafe = { lo: home.lo, wlan0: [{ ...home.wlan0![0], address: "10.0.0.7", cidr: "10.0.0.7/24" }] };
  const offline = { lo: home.lo };
  assert.equal(desktopAddresses(home), "192.168.1.20 fe80::1");
  assert.equal(desktopAddresses(reordered), desktopAddresses(home));
  assert.equal(wakeReason(start, later(CHECK_MS, CHECK_MS, desktopAddresses(reordered)), CHECK_MS), undefined);
  assert.equal(wakeReason(start, later(CHECK_MS, CHECK_MS, desktopAddresses(cafe)), CHECK_MS), "the desktop's network changed");
  assert.equal(wakeReason(start, later(CHECK_MS, CHECK_MS, desktopAddresses(offline)), CHECK_MS), "the desktop's network changed");
});

test("a suspend that also changed the network is said as the suspend", { timeout: 5000 }, () => {
  assert.equal(wakeReason(start, later(CHECK_MS + 3_600_000, CHECK_MS, "10.0.0.7"), CHECK_MS), "the desktop slept (for 1 h)");
});
