#!/usr/bin/env python3
"""Marks each cell of a kvstore-bench run met or missed against the benchmark's goals.

    ci/bench-goals.py target/bench/results.json >> target/bench/results.md

The goals (issue #28, also stated in docs/benchmarks.md):

- at concurrency 32: kvstore at least 1.5x valkeyrie, or at least 0.95x the raw client doing
  the same work where the raw client itself is under 1.5x valkeyrie (no client can be much
  faster than the server lets it be);
- at concurrency 1: never slower than valkeyrie beyond noise, i.e. the 95 % confidence
  interval of kvstore/valkeyrie reaches 1.

Ratios are the geometric means over the rounds with their 95 % intervals, as kvstore-bench
writes them. A cell without a valkeyrie side has no goal and is listed as such.
"""

import json
import sys


def fmt(ratio):
    if not ratio:
        return "—"
    mean, low, high = ratio
    return f"{mean:.2f} ({low:.2f}–{high:.2f})"


def verdict(record):
    go, vs_go = record.get("valkeyrie"), record.get("vs_valkeyrie")
    raw, vs_raw = record.get("raw"), record.get("ratio")
    if not go or not vs_go:
        return "—", "no valkeyrie side"
    if record["concurrency"] == 1:
        met = vs_go[2] >= 1.0
        return ("met" if met else "missed"), "not slower than valkeyrie beyond noise"
    if vs_go[0] >= 1.5:
        return "met", "≥ 1.5× valkeyrie"
    if raw and vs_raw:
        raw_vs_go = raw["ops_per_sec"] / go["ops_per_sec"]
        if raw_vs_go < 1.5:
            met = vs_raw[0] >= 0.95
            return ("met" if met else "missed"), f"≥ 0.95× raw (raw is {raw_vs_go:.2f}× valkeyrie)"
        return "missed", f"≥ 1.5× valkeyrie (raw is {raw_vs_go:.2f}× valkeyrie)"
    return "missed", "≥ 1.5× valkeyrie (no raw side)"


def main(path):
    with open(path) as f:
        report = json.load(f)
    rows = []
    counts = {"met": 0, "missed": 0}
    for r in report["records"]:
        outcome, goal = verdict(r)
        if outcome in counts:
            counts[outcome] += 1
        rows.append(
            f"| {r['backend']} | {r['op']} | {r['concurrency']} | {fmt(r.get('vs_valkeyrie'))} "
            f"| {fmt(r.get('ratio'))} | {goal} | {outcome} |"
        )
    print("\n## Goals\n")
    print(f"{counts['met']} cells met, {counts['missed']} missed.\n")
    print("| backend | operation | conc. | kvstore/valkeyrie (95 % CI) | kvstore/raw (95 % CI) | goal | outcome |")
    print("| --- | --- | ---: | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench-goals.py RESULTS.json")
    main(sys.argv[1])
