#!/usr/bin/env python3
"""Runs the shell examples of the book (and the README) against a real exdaas, checking their answers.

Every fenced block whose info string is `console` is a session: lines that
start with `$ ` are commands (a command goes on over the next lines while
bash would wait for more: a backslash at the end, an open quote, an open
loop), the lines after one are what it prints. A block may be indented, as
in a list item. Each page gets its own server (the binary given, `PORT=0`,
a fresh data folder) and its own bash, so a page's examples are one story:
a document created in one block is read in the next, and a shell variable
set by one command is there for the next. Commands run in a fresh working
folder, with the binary first on PATH and `DETS_ROOT`, `PORT` and
`EXDAAS_URL` naming that server.

What a command prints is checked the way doc tests check Rust examples, but
loosely where values change: `[..]` in a shown line stands for any text in
that line (ids, times, cursors), a line that is only `...` for any number of
lines. `localhost:4000` in commands and answers means the page's server. A
command that exits non-zero fails, unless the page shows why (`|| echo ...`).

A block marked `console illustration` is shown, not run (Docker, Kubernetes,
Heroku: what this machine cannot run); `sh` and `bash` blocks are scripts to
read, and one that talks to the server (`localhost:4000`) is refused: it must
say which it is. A page sets its server's environment with a comment the
book does not show, on a line of its own:
`<!-- examples: env EXDAAS_API_KEYS=... -->`. The server runs in the page's
working folder, so a relative path there (`EXDAAS_BACKUP_DIR=./backups`)
is the one the page's commands see.

    scripts/book-examples.py --bin target/ci/exdaas [docs/src/some/page.md ...]
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^(\s*)(```+)\s*(.*)$")
DIRECTIVE = re.compile(r"\s*<!--\s*examples:\s*env\s+(.*?)\s*-->\s*")
SEPARATOR = "\x1e"
PAGE_SECONDS = 120


@dataclass
class Example:
    page: Path
    line: int
    command: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Page:
    path: Path
    env: dict[str, str]
    examples: list[Example]
    refusals: list[str]


def is_complete(command: str) -> bool:
    """A command is whole when bash would run it: no open quote, loop or
    here-document, and no backslash at the end."""
    if command.endswith("\\"):
        return False
    check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    waiting = ("unexpected end of file", "unexpected EOF", "delimited by end-of-file")
    return not any(sign in check.stderr for sign in waiting)


def parse(path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").splitlines()
    env: dict[str, str] = {}
    examples: list[Example] = []
    refusals: list[str] = []
    i = 0
    while i < len(lines):
        directive = DIRECTIVE.fullmatch(lines[i])
        for pair in shlex.split(directive.group(1)) if directive else []:
            name, _, value = pair.partition("=")
            env[name] = value
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, marker, info = fence.group(1), fence.group(2), fence.group(3).split()
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].strip().startswith(marker):
            end += 1
        # A block inside a list item is indented as the item is.
        body = [b[len(indent):] if b.startswith(indent) else b.lstrip() for b in lines[start:end]]
        language = info[0] if info else ""
        if language == "console" and "illustration" not in info:
            examples.extend(session(path, start + 1, body))
        elif language in ("sh", "bash", "shell") and any("localhost:4000" in b for b in body):
            refusals.append(
                f"{path}:{start}: a `{language}` block talks to the server: make it `console` "
                "(run and checked) or `console illustration` (shown only)"
            )
        i = end + 1
    return Page(path, env, examples, refusals)


def session(path: Path, first_line: int, body: list[str]) -> list[Example]:
    examples: list[Example] = []
    j = 0
    while j < len(body):
        line = body[j]
        if not line.startswith("$ "):
            if examples:
                examples[-1].expected.append(line)
            elif line.strip():
                raise SystemExit(f"{path}:{first_line + j}: output before any `$ ` command")
            j += 1
            continue
        command, number = line[2:], first_line + j
        while not is_complete(command) and j + 1 < len(body):
            j += 1
            command += "\n" + body[j]
        examples.append(Example(path, number, command))
        j += 1
    return examples


def line_pattern(line: str) -> re.Pattern[str]:
    return re.compile("^" + ".*?".join(re.escape(part) for part in line.split("[..]")) + "$")


def matches(expected: list[str], actual: list[str]) -> bool:
    """Shown lines against printed ones: `[..]` is any text in a line, `...` any lines."""
    patterns = [None if e.strip() == "..." else line_pattern(e) for e in expected]
    memo: dict[tuple[int, int], bool] = {}

    def go(e: int, a: int) -> bool:
        if (e, a) in memo:
            return memo[(e, a)]
        if e == len(patterns):
            result = a == len(actual)
        elif patterns[e] is None:
            result = any(go(e + 1, k) for k in range(a, len(actual) + 1))
        else:
            result = a < len(actual) and bool(patterns[e].match(actual[a])) and go(e + 1, a + 1)
        memo[(e, a)] = result
        return result

    return go(0, 0)


def trimmed(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def start_server(binary: Path, data: Path, work: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    server_env = {
        k: v for k, v in os.environ.items() if not k.startswith("EXDAAS_") and k not in ("PORT", "DETS_ROOT")
    }
    server_env.update(PORT="0", DETS_ROOT=str(data), EXDAAS_LOG_FORMAT="json", RUST_LOG="info,sqlx=warn")
    server_env.update(env)
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(binary.resolve())], cwd=work, env=server_env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r'"message":"exdaas listening".*?"port":(\d+)', log.read_text())
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")


def run_page(page: Page, binary: Path) -> list[str]:
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="exdaas-book-") as scratch:
        root = Path(scratch)
        data, work = root / "data", root / "work"
        work.mkdir()
        process, port = start_server(binary, data, work, root / "server.log", page.env)
        here = f"localhost:{port}"
        try:
            script = "".join(
                example.command.replace("localhost:4000", here).replace("127.0.0.1:4000", here)
                + f"\nprintf '\\n{SEPARATOR}%d{SEPARATOR}\\n' $?\n"
                for example in page.examples
            )
            shell_env = dict(os.environ)
            shell_env.update(
                PATH=f"{binary.parent.resolve()}{os.pathsep}{os.environ.get('PATH', '')}",
                PORT=str(port),
                DETS_ROOT=str(data),
                EXDAAS_URL=f"http://{here}",
                HOME=str(root),
            )
            try:
                done = subprocess.run(
                    ["bash", "--noprofile", "--norc", "-c", script],
                    cwd=work,
                    env=shell_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=PAGE_SECONDS,
                )
                printed = done.stdout.decode("utf-8", "replace")
            except subprocess.TimeoutExpired as timeout:
                printed = (timeout.stdout or b"").decode("utf-8", "replace")
                failures.append(f"{page.path}: the page's examples took more than {PAGE_SECONDS} s")
            parts = printed.split(f"\n{SEPARATOR}")
            for index, example in enumerate(page.examples):
                if index >= len(parts) - 1:
                    failures.append(f"{example.page}:{example.line}: never ran (an earlier command ended the shell)")
                    continue
                chunk = parts[index] if index == 0 else parts[index].partition(f"{SEPARATOR}\n")[2]
                status = parts[index + 1].partition(SEPARATOR)[0]
                actual = trimmed(chunk.replace("\r", "").replace(here, "localhost:4000").split("\n"))
                expected = trimmed(example.expected)
                problems = []
                if status != "0":
                    problems.append(f"it exited with status {status}")
                if not matches(expected, actual):
                    problems.append("it printed something else than the book shows")
                if problems:
                    failures.append(
                        f"{example.page}:{example.line}: {' and '.join(problems)}\n"
                        f"  $ {example.command}\n"
                        "  -- the book shows:\n" + "".join(f"  | {e}\n" for e in expected)
                        + "  -- it printed:\n" + "".join(f"  | {a}\n" for a in actual)
                    )
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                failures.append(f"{page.path}: the server did not stop within 30 s of SIGTERM")
            if process.returncode not in (0, None, -9) and not failures:
                failures.append(
                    f"{page.path}: the server exited with {process.returncode}:\n"
                    + (root / "server.log").read_text()[-3000:]
                )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.environ.get("EXDAAS_BIN", "target/ci/exdaas"), type=Path)
    parser.add_argument("--book", default=Path("docs/src"), type=Path)
    parser.add_argument("pages", nargs="*", type=Path)
    args = parser.parse_args()
    if not args.bin.is_file():
        print(f"no exdaas binary at {args.bin} (set --bin or EXDAAS_BIN)", file=sys.stderr)
        return 2
    if shutil.which("curl") is None:
        print("curl is missing: the book's examples use it", file=sys.stderr)
        return 2
    pages = [parse(p) for p in (args.pages or [Path("README.md"), *sorted(args.book.rglob("*.md"))])]
    failures = [refusal for page in pages for refusal in page.refusals]
    commands = illustrated = 0
    for page in pages:
        if page.examples:
            failures += run_page(page, args.bin)
            commands += len(page.examples)
            illustrated += 1
    for failure in failures:
        print(failure, file=sys.stderr)
    print(
        f"book examples: {commands} commands on {illustrated} pages run, "
        f"{len(failures)} failed ({len(pages)} pages read)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
