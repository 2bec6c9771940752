#!/usr/bin/env python3
"""Runs test binaries at once instead of one after another, as `cargo test` would.

    ci/parallel-tests.py CARGO_TEST_ARGS... -- TEST_BINARY_ARGS...

Builds with `cargo test CARGO_TEST_ARGS... --no-run` (so the same features, and no rebuild
after a `cargo test` with the same arguments), then starts every test binary cargo names, each
in its package's directory as `cargo test` does, with TEST_BINARY_ARGS. Each binary's output is
printed whole when it ends, so the logs do not interleave. Fails if any binary fails, or runs no
test (a filter that no longer matches would otherwise pass as "0 tests"). Every binary is
bounded by KVSTORE_PARALLEL_TIMEOUT seconds (default 900) from its start: past it, it is killed
and fails. KVSTORE_PARALLEL_JOBS (default: all) bounds how many run at a time;
KVSTORE_PARALLEL_SKIP (`crate-dir/target,…`) leaves out binaries the cargo arguments select but
that hold none of the tests asked for.
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
    # Binaries the cargo arguments select but that hold none of the tests asked for, named
    # `crate-dir/target` (the main run runs their tests): not run here.
    skipped = set(filter(None, os.environ.get("KVSTORE_PARALLEL_SKIP", "").split(",")))
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
                target = f"{os.path.basename(package_dir)}/{message['target']['name']}"
                if target not in skipped:
                    binaries.append((package_dir, message["executable"]))
    if not binaries:
        sys.exit("cargo built no test binary for: " + " ".join(cargo_args))
    timeout = float(os.environ.get("KVSTORE_PARALLEL_TIMEOUT", "900"))
    jobs = int(os.environ.get("KVSTORE_PARALLEL_JOBS", "0")) or len(binaries)
    started = time.monotonic()
    pending = list(binaries)
    running = []
    failed = []

    def start_next():
        package_dir, executable = pending.pop(0)
        log = tempfile.TemporaryFile("w+")
        process = subprocess.Popen(
            [executable, *test_args], cwd=package_dir, stdout=log, stderr=subprocess.STDOUT
        )
        running.append((package_dir, executable, process, log, time.monotonic()))

    def finish(entry):
        package_dir, executable, process, log, began = entry
        left = max(1.0, timeout - (time.monotonic() - began))
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

    total = len(binaries)
    while pending or running:
        while pending and len(running) < jobs:
            start_next()
        # The first to end frees a slot (each binary is bounded by its own timeout).
        while True:
            done = [entry for entry in running if entry[2].poll() is not None]
            overdue = [e for e in running if time.monotonic() - e[4] > timeout]
            if done or overdue:
                break
            time.sleep(0.1)
        for entry in done or overdue[:1]:
            running.remove(entry)
            finish(entry)
    print(
        f"{total} test binaries, {min(jobs, total)} at a time, in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    if failed:
        sys.exit("failed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main(sys.argv[1:])
