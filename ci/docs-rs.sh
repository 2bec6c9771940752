#!/usr/bin/env bash
# Builds each published crate's documentation the way docs.rs does (nightly features through
# RUSTC_BOOTSTRAP, `--cfg docsrs`, every feature on, the crate alone), with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
published=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["publish"] != []:
        print(p["name"])
')
for crate in $published; do
    echo "== docs.rs build of $crate"
    RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="--cfg docsrs -Dwarnings" \
        cargo doc --no-deps --all-features --locked -p "$crate"
done
