#!/usr/bin/env python3
"""What CI checks of README.md, from the README itself so the two cannot drift apart.

  readme.py use-it DIR          writes DIR/Cargo.toml (a [package] header, then the "Use it"
                                section's TOML block verbatim) and DIR/src/main.rs (its Rust
                                program verbatim)
  readme.py session WORKDIR     runs the kvctl session of the "kvctl" section in WORKDIR (kvctl
                                on PATH) and compares every output line with the README's
  readme.py links FILE          fails on a relative Markdown link (dead once the README is
                                shown on crates.io)
"""
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def section(text, title):
    start = text.index("\n## " + title + "\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(text, lang):
    return re.findall(r"```" + lang + r"[^\n]*\n(.*?)```", text, flags=re.S)


def use_it(out_dir):
    text = open(README, encoding="utf-8").read()
    part = section(text, "Use it")
    toml = blocks(part, "toml")
    rust = blocks(part, "rust")
    if len(toml) != 1 or len(rust) != 1:
        sys.exit(f'"Use it" must hold one TOML block and one Rust program; found {len(toml)} and {len(rust)}')
    os.makedirs(os.path.join(out_dir, "src"), exist_ok=True)
    header = '[package]\nname = "readme-use-it"\nversion = "0.1.0"\nedition = "2024"\npublish = false\n\n'
    with open(os.path.join(out_dir, "Cargo.toml"), "w", encoding="utf-8") as f:
        f.write(header + toml[0])
    with open(os.path.join(out_dir, "src", "main.rs"), "w", encoding="utf-8") as f:
        f.write(rust[0])


def session(workdir):
    text = open(README, encoding="utf-8").read()
    part = section(text, "kvctl: the command line")
    shell = [b for b in blocks(part, "sh") if b.lstrip().startswith("$ ")]
    if len(shell) != 1:
        sys.exit(f'the "kvctl" section must hold one session (lines starting with "$ "); found {len(shell)}')
    steps = []
    for line in shell[0].splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    marker = "@@readme-session-step@@"
    script = "".join(f"echo {marker}\n{{ {command}\n}} 2>&1\n" for command, _ in steps)
    run = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=300)
    outputs = run.stdout.split(marker + "\n")[1:]
    failed = False
    for (command, expected), got in zip(steps, outputs):
        got = got.splitlines()
        status = "ok" if got == expected else "DIFFERS"
        print(f"$ {command}  [{status}]")
        if got != expected:
            failed = True
            print("  README:", *expected, sep="\n    ")
            print("  got:", *got, sep="\n    ")
    if len(outputs) != len(steps):
        failed = True
        print(f"only {len(outputs)} of {len(steps)} commands ran; stderr: {run.stderr}")
    if failed:
        sys.exit("the README's kvctl session does not run as written")


def links(path):
    text = open(path, encoding="utf-8").read()
    bad = [m for m in re.findall(r"\]\(([^)]+)\)", text) if not re.match(r"https?://", m)]
    if bad:
        sys.exit(f"{path}: relative links, dead on crates.io: {bad}")


if __name__ == "__main__":
    {"use-it": use_it, "session": session, "links": links}[sys.argv[1]](*sys.argv[2:])
