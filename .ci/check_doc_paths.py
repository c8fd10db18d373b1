"""Fails if a document names a repository path that does not exist.

A path is any `code span` or [link](target) that looks like a file or directory of this
repository: it starts with one of the top-level names below, or it is a Rust source file or
module directory named relative to src/ (`app.rs`, `http/relay.rs`, `pipeline/`), as the
code map in ARCHITECTURE.md does. Keeps the docs honest.
"""

import os
import re
import sys

ROOTS = ("src/", "tests/", "benches/", "config/", "deploy/", "prompts/", "docs/", ".ci/",
         "Cargo.toml", "README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "docker-compose.yml")
CANDIDATE = re.compile(r"`([^`\s]+)`|\]\(([^)\s]+)\)")

failures = []
for document in sys.argv[1:]:
    with open(document, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            for match in CANDIDATE.finditer(line):
                path = (match.group(1) or match.group(2)).split("#")[0].rstrip(".,:;")
                if path.startswith(ROOTS):
                    exists = os.path.exists(path)
                elif re.fullmatch(r"[a-z_/]+(\.rs|/)", path):
                    exists = os.path.exists(os.path.join("src", path))
                else:
                    continue
                if not exists:
                    failures.append(f"{document}:{number}: {path} does not exist")

print("\n".join(failures) or f"all paths named in {len(sys.argv) - 1} documents exist")
sys.exit(1 if failures else 0)
