"""LEDGER.md §6 and §13 across network namespaces: each validator in its own namespace with its
own address (10.231.0.0/24, which exists only inside these namespaces), behind two bridges joined
by one veth trunk. A real 2|2 partition is that trunk going down: TCP links break, redials fail,
and neither half commits; once it is up, the links come back and the chain goes on."""
import os
import subprocess
import time

import pytest

from ledger_cluster import Cluster

PREFIX = f"ghl{os.getpid() % 100_000}"
SWITCH = f"{PREFIX}-sw"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces():
    """n + 1 namespaces: a switch with bridges bra/brb joined by trunka<->trunkb, and one per validator."""
    probe = subprocess.run(["ip", "netns", "add", SWITCH], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces are not available here (ip netns add: {probe.stderr.strip()})")
    made = [SWITCH]

    def build(n: int) -> list[str]:
        for br in ("bra", "brb"):
            ip("-n", SWITCH, "link", "add", br, "type", "bridge")
            ip("-n", SWITCH, "link", "set", br, "up")
        ip("-n", SWITCH, "link", "add", "trunka", "type", "veth", "peer", "name", "trunkb")
        for end, br in (("trunka", "bra"), ("trunkb", "brb")):
            ip("-n", SWITCH, "link", "set", end, "master", br)
            ip("-n", SWITCH, "link", "set", end, "up")
        names = []
        for i in range(n):
            ns = f"{PREFIX}-{i}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{i}", "netns", SWITCH)
            ip("-n", ns, "addr", "add", f"10.231.0.{i + 1}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", SWITCH, "link", "set", f"v{i}", "master", "bra" if i < n // 2 else "brb")
            ip("-n", SWITCH, "link", "set", f"v{i}", "up")
            names.append(ns)
        return names

    yield build
    for ns in reversed(made):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_validators_in_namespaces_survive_a_real_2_2_partition(tmp_path, namespaces):
    names = namespaces(4)
    c = Cluster(tmp_path, 4, hosts=[f"10.231.0.{i + 1}" for i in range(4)], api="unix",
                prefix=tuple(f"ip netns exec {ns}" for ns in names))
    try:
        c.start_all()
        c.wait_ready()
        c.wait_height(3, timeout_s=40)
        ip("-n", SWITCH, "link", "set", "trunka", "down")
        time.sleep(1.5)                       # a height whose precommits were already out may still land
        frozen = [c.height(i) for i in range(4)]
        time.sleep(5)
        assert [c.height(i) for i in range(4)] == frozen, "a half of the network committed alone"
        ip("-n", SWITCH, "link", "set", "trunka", "up")
        c.wait_height(max(frozen) + 3, timeout_s=40)
        assert c.assert_one_chain() >= max(frozen) + 3
        events = c.status(0)["link_events"]
        assert events.get("idle_timeout", 0) + events.get("disconnected", 0) >= 1    # the cut was seen on the links
    finally:
        c.stop_all()
