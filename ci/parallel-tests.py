#!/usr/bin/env python3
"""Runs test binaries at once instead of one after another, as `cargo test` would.

    ci/parallel-tests.py CARGO_TEST_ARGS... -- TEST_BINARY_ARGS...

Builds with `cargo test CARGO_TEST_ARGS... --no-run` (so the same features, and no rebuild
after a `cargo test` with the same arguments), then starts every test binary cargo names, each
in its package's directory as `cargo test` does, with TEST_BINARY_ARGS. Each binary's output is
printed whole when it ends, so the logs do not interleave. Fails if any binary fails, or runs no
test (a filter that no longer matches would otherwise pass as "0 tests"). Every binary is
bounded by KVSTORE_PARALLEL_TIMEOUT seconds (default 900): past it, it is killed and fails.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time


def main(argv):
    if "--" not in argv:
        sys.exit("usage: parallel-tests.py CARGO_TEST_ARGS... -- TEST_BINARY_ARGS...")
    split = argv.index("--")
    cargo_args, test_args = argv[:split], argv[split + 1 :]
    built = subprocess.run(
        ["cargo", "test", *cargo_args, "--no-run", "--message-format=json-render-diagnostics"],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    binaries = []
    for line in built.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            if message["profile"]["test"]:
                package_dir = os.path.dirname(message["manifest_path"])
                binaries.append((package_dir, message["executable"]))
    if not binaries:
        sys.exit("cargo built no test binary for: " + " ".join(cargo_args))
    timeout = float(os.environ.get("KVSTORE_PARALLEL_TIMEOUT", "900"))
    started = time.monotonic()
    running = []
    for package_dir, executable in binaries:
        log = tempfile.TemporaryFile("w+")
        process = subprocess.Popen(
            [executable, *test_args], cwd=package_dir, stdout=log, stderr=subprocess.STDOUT
        )
        running.append((package_dir, executable, process, log))
    failed = []
    for package_dir, executable, process, log in running:
        left = max(1.0, timeout - (time.monotonic() - started))
        try:
            code = process.wait(timeout=left)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            failed.append(f"{executable}: killed after {timeout:.0f} s")
        log.seek(0)
        output = log.read()
        log.close()
        name = os.path.relpath(executable)
        print(f"     Running {name} (in {os.path.relpath(package_dir)})", flush=True)
        print(output, flush=True)
        counts = [int(n) for n in re.findall(r"^running (\d+) tests?$", output, re.M)]
        if code != 0:
            failed.append(f"{name}: exit status {code}")
        elif sum(counts) == 0:
            failed.append(f"{name}: ran no test for {' '.join(test_args)!r}")
    print(f"{len(running)} test binaries at once in {time.monotonic() - started:.1f} s", flush=True)
    if failed:
        sys.exit("failed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main(sys.argv[1:])
