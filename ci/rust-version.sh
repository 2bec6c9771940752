#!/usr/bin/env bash
# The workspace's `rust-version` must be at least the highest `rust-version` any package of the
# locked dependency graph declares (every target platform, build and dev dependencies included):
# a lower one promises users a toolchain that cannot build the crates. Prints both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"every workspace crate must take rust-version from the workspace; found {sorted(map(str, ours))}")
declared = ours.pop()

def version(text):
    return tuple(int(part) for part in text.split("."))

deps = [(version(p["rust_version"]), p["name"], p["version"])
        for p in meta["packages"] if p["id"] not in members and p.get("rust_version")]
highest = max(deps)
needed = ".".join(map(str, highest[0]))
print(f"rust-version: declared {declared}; highest in the locked graph {needed} ({highest[1]} {highest[2]})")
if version(declared) < highest[0]:
    sys.exit(f"rust-version {declared} is below what {highest[1]} {highest[2]} needs; raise it in Cargo.toml")
'
