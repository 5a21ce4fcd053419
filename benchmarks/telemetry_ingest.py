"""Fleet telemetry ingest benchmark: messages/s one collector and two (shared group) store.

One run, two phases, each against a fresh mosquitto we start on a free loopback port
(anonymous, no persistence, unlimited queues) unless --broker is given:

  1. one collector process   <- simulated devices (publisher processes, QoS 1, as fast as possible)
  2. two collector processes in one $share group, same load

Each phase runs twice: "live" (collectors up while devices publish: the clock runs from the
first publish, so slow publishers cap it) and "backlog drain" (devices publish while the
collectors are away, their persistent sessions queue everything, the clock runs from the
collectors' return: their own ceiling). The clock stops when the store holds every message; "lost" is
messages acknowledged by the broker but missing from the store, "duplicates" rows the store
refused as already present; "cpu us/msg" is the collector processes' CPU time per message
(steadier than msg/s on a shared machine). Results go to stdout and
benchmarks/telemetry_ingest_results.json.

    python benchmarks/telemetry_ingest.py                      # 20,000 messages per phase, SQLite
    python benchmarks/telemetry_ingest.py --messages 100000 --db postgresql://postgres@127.0.0.1/test
    git archive main | tar -x -C /tmp/base                     # before/after in one run: the same
    python benchmarks/telemetry_ingest.py --baseline /tmp/base --rounds 3   # publishers, collectors alternating
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from edgeslm.telemetry.broker import Mosquitto, free_port, write_config
from edgeslm.telemetry.mqtt import BrokerConfig
from edgeslm.telemetry.simulate import SimConfig, simulate

PUBLISHERS = {"paho": simulate}  # "wire": edgeslm.telemetry.blast (added below when this checkout has it)
try:
    from edgeslm.telemetry.blast import blast

    PUBLISHERS["wire"] = blast
except ImportError:  # an older checkout
    pass
from edgeslm.telemetry.stores import open_store

RESULTS = Path(__file__).with_name("telemetry_ingest_results.json")


def collector_process(tree: str | None, broker: BrokerConfig, fleet: str, db: str, client_id: str, ready, done,
                      out) -> None:
    if tree:  # run the collector of another checkout (the publishers stay the same)
        for name in [m for m in sys.modules if m == "edgeslm" or m.startswith("edgeslm.")]:
            del sys.modules[name]
        sys.path.insert(0, tree)
    from edgeslm.telemetry.collector import Collector, CollectorConfig
    from edgeslm.telemetry.stores import open_store

    store = open_store(db)
    cpu0 = time.process_time()  # from here on: connecting, receiving, validating, storing, acknowledging
    col = Collector(CollectorConfig(broker=broker, fleet=fleet, group="bench", client_id=client_id,
                                    session_expiry_s=300, batch_size=5000), store).start()
    if not col.wait_connected(15):
        out.put({"client_id": client_id, "error": "did not connect"})
        return
    ready.set()
    done.wait()
    col.stop()
    s = col.stats
    out.put({"client_id": client_id, "received": s.received, "stored": s.stored, "duplicates": s.duplicates,
             "dead": sum(s.dead.values()), "batches": s.batches, "first_at": s.first_at,
             "last_commit_at": s.last_commit_at, "cpu_s": time.process_time() - cpu0})
    store.close()


def count(db: str, fleet: str) -> int:
    with open_store(db) as store:
        return store.telemetry_count(fleet)


def start_collectors(broker, db, fleet, n, ctx, tree=None):
    done, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(n)]
    procs = [ctx.Process(target=collector_process, args=(tree, broker, fleet, db, f"bench-{fleet}-{k}", readies[k],
                                                         done, out)) for k in range(n)]
    for p in procs:
        p.start()
    for r in readies:
        if not r.wait(30):
            raise SystemExit("a collector did not come up")
    return procs, done, out


def stop_collectors(procs, done, out) -> list[dict]:
    done.set()
    stats = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    return stats


def wait_stored(db: str, fleet: str, expected: int, timeout: float = 180) -> int:
    stored, deadline = 0, time.monotonic() + timeout
    with open_store(db) as store:  # one connection, polled gently: this process must not take the collectors' CPU
        while time.monotonic() < deadline:
            stored = store.telemetry_count(fleet)
            if stored >= expected:
                break
            time.sleep(0.25)
    return stored


def phase(broker: BrokerConfig, db: str, collectors: int, devices: int, per_device: int, publishers: int,
          backlog: bool, tree: str | None = None, publisher: str = "wire") -> dict:
    """``backlog``: publish everything while the collectors are away (their sessions queue it), then
    time the drain -- the collectors' own ceiling, free of the publishers' speed."""
    fleet = "bench-" + uuid.uuid4().hex[:8]
    ctx = mp.get_context("spawn")
    expected = devices * per_device
    sim_cfg = SimConfig(broker=broker, fleet=fleet, devices=devices, rate=0, duration_s=None, messages=per_device,
                        connections=2, processes=publishers, status=False)
    procs, done, out = start_collectors(broker, db, fleet, collectors, ctx, tree)  # creates the sessions
    if backlog:
        stop_collectors(procs, done, out)
        t0 = time.monotonic()
        sim = PUBLISHERS[publisher](sim_cfg)
        t_pub = time.monotonic() - t0
        procs, done, out = start_collectors(broker, db, fleet, collectors, ctx, tree)
        t0 = time.monotonic()
    else:
        t0, t0_wall = time.monotonic(), time.time()
        sim = PUBLISHERS[publisher](sim_cfg)
        t_pub = time.monotonic() - t0
    load0 = os.getloadavg()[0]
    stored = wait_stored(db, fleet, expected)
    t_all = time.monotonic() - t0
    stats = stop_collectors(procs, done, out)
    if backlog:  # from the first message any collector took to the last commit: no process start-up in it
        t_all = max(x["last_commit_at"] for x in stats) - min(x["first_at"] for x in stats)
    else:  # from the first publish to the last commit (not to when this process noticed it)
        t_all = max(x["last_commit_at"] for x in stats) - t0_wall
    return {"mode": "backlog drain" if backlog else "live", "collectors": collectors, "messages": expected,
            "acked_by_broker": sim.acked, "stored": stored, "lost": sim.acked - stored,
            "duplicates": sum(s.get("duplicates", 0) for s in stats),
            "publish_msgs_per_s": round(sim.sent / t_pub, 1), "ingest_msgs_per_s": round(stored / t_all, 1),
            "collector_cpu_us_per_msg": round(1e6 * sum(x.get("cpu_s", 0) for x in stats)
                                              / max(1, sum(x.get("received", 0) for x in stats)), 1),
            "seconds": round(t_all, 2), "load_average_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
            "per_collector": stats}


def report(r: dict, label: str = "") -> None:
    print(f"{label}{r['mode']:>13}, {r['collectors']} collector(s): {r['ingest_msgs_per_s']:.0f} msg/s stored "
          f"({r['stored']}/{r['messages']} in {r['seconds']} s; publishers {r['publish_msgs_per_s']:.0f} msg/s), "
          f"collector cpu {r['collector_cpu_us_per_msg']:.0f} us/msg, lost {r['lost']}, duplicates {r['duplicates']}, "
          f"split {[s.get('received') for s in r['per_collector']]}, load average {r['load_average_1min']}")


def compare(results: list[dict]) -> dict:
    """Per phase: best msg/s and least CPU/msg of each side, and current/baseline ratios."""
    out = {}
    for r in results:
        key = f"{r['mode']}, {r['collectors']} collector(s)"
        side = out.setdefault(key, {}).setdefault(r["tree"], {"msgs_per_s": 0.0, "cpu_us_per_msg": float("inf")})
        side["msgs_per_s"] = max(side["msgs_per_s"], r["ingest_msgs_per_s"])
        side["cpu_us_per_msg"] = min(side["cpu_us_per_msg"], r["collector_cpu_us_per_msg"])
    for sides in out.values():
        if "baseline" in sides and "current" in sides:
            b, c = sides["baseline"], sides["current"]
            sides["msgs_per_s_ratio"] = round(c["msgs_per_s"] / b["msgs_per_s"], 3)
            sides["cpu_ratio"] = round(c["cpu_us_per_msg"] / b["cpu_us_per_msg"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000, help="messages per phase")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--broker", default=None, help="use this broker instead of starting one")
    ap.add_argument("--db", default=None, help="store URL [default: a fresh SQLite file]")
    ap.add_argument("--no-save", action="store_true", help="do not write the results file")
    ap.add_argument("--baseline", default=None, help="checkout of another edgeslm to compare with, phase by phase")
    ap.add_argument("--rounds", type=int, default=1, help="repetitions of every phase (with --baseline: interleaved)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (broker, SQLite store)")
    ap.add_argument("--publisher", choices=sorted(PUBLISHERS), default="wire" if "wire" in PUBLISHERS else "paho",
                    help="load generator: wire (raw MQTT v5 socket, not the bottleneck) or paho (the simulator)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgeslm-bench-"))
    db = args.db or f"sqlite:///{tmp}/fleet.db"
    per_device = max(1, args.messages // args.devices)
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
               "python": sys.version.split()[0], "store": db.split(":")[0], "devices": args.devices,
               "publisher_processes": args.publishers, "publisher": args.publisher, "qos": 1, "phases": []}
    broker_proc = None
    if args.broker:
        broker = BrokerConfig.from_url(args.broker)
    else:
        files = write_config(tmp / "broker", free_port(), users=None, persistence=False, max_queued=0)
        broker_proc = Mosquitto(files).start()
        broker = BrokerConfig(port=files.port)
    trees = [("baseline", str(Path(args.baseline).resolve())), ("current", None)] if args.baseline else \
        [("current", None)]
    try:
        for _ in range(args.rounds):
            for backlog in (False, True):
                for n in (1, 2):
                    for name, tree in trees:
                        r = phase(broker, db, n, args.devices, per_device, args.publishers, backlog, tree,
                                  args.publisher)
                        r["tree"] = name
                        results["phases"].append(r)
                        report(r, f"{name:>8}: " if args.baseline else "")
    finally:
        if broker_proc:
            broker_proc.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.baseline:
        results["baseline"] = args.baseline
        results["comparison"] = compare(results["phases"])
        for key, sides in results["comparison"].items():
            print(f"{key:>30}: msg/s current/baseline {sides.get('msgs_per_s_ratio')}, "
                  f"collector CPU per message current/baseline {sides.get('cpu_ratio')}")
    if not args.no_save:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    return 0 if all(p["lost"] == 0 for p in results["phases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
