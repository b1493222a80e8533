#!/usr/bin/env python3
"""Checks k8s/Dockerfile without building it (no container engine runs here):

- every file that a COPY takes from the build context (the repository root) exists, after the
  documented build step (`scripts/setup.sh` builds target/release/), and .dockerignore lets it in;
- every FROM names a pinned image: a tag with a version number, never `latest` or no tag (ARG
  defaults are substituted; a FROM naming an earlier stage is fine);
- the last USER is not root (by name or by uid 0);
- the ENTRYPOINT, in exec form, is the clipfleet binary that the image copies in.

    check_dockerfile.py [DOCKERFILE] [CONTEXT]     (defaults: k8s/Dockerfile, the repository root)

Prints one line per problem and exits 1 if there is any.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def dockerignore_patterns(context: str) -> list[tuple[bool, str]]:
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    pats = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pats.append((neg, line[1:] if neg else line))
    return pats


def ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches a path's parents."""
    result = False
    parts = rel.split("/")
    for neg, pat in patterns:
        pat = pat.strip("/")
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts)))
        if hit:
            result = not neg
    return result


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def check(dockerfile: str, context: str) -> list[str]:
    problems: list[str] = []
    text = open(dockerfile, encoding="utf-8").read()
    steps = instructions(text)
    patterns = dockerignore_patterns(context)
    args: dict[str, str] = {}
    stages: set[str] = set()
    copied_to: list[str] = []
    user = None
    entrypoint = None
    entrypoint_seen = False
    seen_from = False
    for word, rest in steps:
        if word == "ARG" and not seen_from:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif word == "FROM":
            seen_from = True
            user = None  # each stage starts as the base image's user
            tokens = [t for t in rest.split() if not t.startswith("--")]
            image = substitute(tokens[0], args)
            if len(tokens) >= 3 and tokens[1].upper() == "AS":
                stages.add(tokens[2])
            if image in stages:
                continue
            if "$" in image:
                problems.append(f"FROM {tokens[0]}: an ARG without a default ({image})")
                continue
            name, _, digest = image.partition("@")
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
            if not tag and not digest:
                problems.append(f"FROM {image}: no tag, which means `latest`; pin a version")
            elif tag == "latest" or (tag and not re.search(r"\d+\.\d+", tag)):
                problems.append(f"FROM {image}: the tag {tag!r} is not a pinned version")
        elif word == "COPY":
            tokens = shlex.split(rest)
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            if len(paths) < 2:
                problems.append(f"COPY {rest}: needs a source and a destination")
                continue
            sources, dest = paths[:-1], paths[-1]
            copied_to += [dest.rstrip("/") + "/" + os.path.basename(s) if dest.endswith("/") else dest for s in sources]
            if any(f.startswith("--from=") for f in flags):
                continue
            for src in sources:
                full = os.path.join(context, src)
                if not os.path.exists(full):
                    problems.append(f"COPY {src}: {full} does not exist (build it first: scripts/setup.sh)")
                elif ignored(src, patterns):
                    problems.append(f"COPY {src}: excluded from the build context by .dockerignore")
        elif word == "USER":
            user = rest.split(":")[0].strip()
        elif word == "ENTRYPOINT":
            entrypoint_seen = True
            try:
                entrypoint = json.loads(rest)
            except json.JSONDecodeError:
                problems.append(f"ENTRYPOINT {rest}: use the exec form, [\"/path/to/clipfleet\"], so that the binary is PID 1 and gets SIGTERM")
    if user is None:
        problems.append("no USER in the final stage: the image would run as root")
    elif user in ("root", "0"):
        problems.append(f"USER {user}: the image must run as a non-root user")
    if entrypoint is not None:
        if not entrypoint or os.path.basename(entrypoint[0]) != "clipfleet":
            problems.append(f"ENTRYPOINT {entrypoint}: must be the clipfleet binary")
        elif entrypoint[0] not in copied_to:
            problems.append(f"ENTRYPOINT {entrypoint[0]}: no COPY puts a file there (copied: {copied_to})")
    elif not entrypoint_seen:
        problems.append("no ENTRYPOINT: it must be the clipfleet binary")
    return problems


def main() -> int:
    dockerfile = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "k8s", "Dockerfile")
    context = sys.argv[2] if len(sys.argv) > 2 else ROOT
    problems = check(dockerfile, context)
    for p in problems:
        print(f"{os.path.relpath(dockerfile, ROOT)}: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
