"""A long Schemathesis run against a real server's /openapi.json (CI runs a short one:
tests/server/test_schemathesis.py).

    .venv/bin/python -m reliability.schemathesis_run [--max-examples 1000] [-- ST_ARGS...]

Starts ``qlevents serve`` with the admin API on a loopback port and a temporary data
directory, runs ``schemathesis run`` on its served document with every phase (examples,
coverage, fuzzing, stateful), valid and invalid inputs, and the checks that apply to this
API (see the test module for why negative_data_rejection does not); then a second pass over
the admin routes that name an account, with one that exists. Arguments after ``--``
go to ``schemathesis run`` as they are. Exits with Schemathesis' exit code (0: no failure).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import ADMIN_TOKEN, RunningServer, free_port

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=1000, help="per operation")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--report-dir", type=Path, help="write JUnit and NDJSON reports here")
    parser.add_argument("extra", nargs="*", help="more `schemathesis run` arguments (after --)")
    args = parser.parse_args(argv)
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    with tempfile.TemporaryDirectory(prefix="qlevents-schemathesis-") as tmp:
        server = RunningServer(
            Path(tmp) / "data", free_port(), ["--admin-token", ADMIN_TOKEN], Path(tmp) / "log"
        )
        server.start()
        try:
            # Second pass: the routes that name an account, with one that exists (in the
            # first pass generated keys make them all 404s).
            config = Path(tmp) / "existing-account.toml"
            key = server.add_account("schemathesis")
            config.write_text(f'[parameters]\n"path.key" = "{key}"\n')
            passes = [[], ["--config-file", str(config)]]
            extra = [[], ["--include-path-regex", "[{]key[}]"]]
            command = [
                "run", f"{server.url}/openapi.json",
                "--checks", CHECKS,
                "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
                "--max-examples", str(args.max_examples),
                "--mode", "all",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--workers", args.workers,
                "--request-timeout", "30",
                "--generation-database", "none",
                "--suppress-health-check", "all",
                "--no-color",
            ]  # fmt: skip
            if args.seed is not None:
                command += ["--seed", str(args.seed)]
            if args.report_dir:
                report_dir = str(args.report_dir.resolve())
                command += ["--report", "junit,ndjson", "--report-dir", report_dir]
            command += args.extra
            code = 0
            for before, after in zip(passes, extra, strict=True):
                run = [st, *before, *command, *after]
                print("$", " ".join(run), flush=True)
                # In the temporary directory: schemathesis keeps a .schemathesis/ cache there.
                code = code or subprocess.run(run, cwd=tmp, check=False).returncode
            server_errors = [line for line in server.log().splitlines() if "Traceback" in line]
            if server_errors:
                print(f"the server logged {len(server_errors)} tracebacks:\n{server.log()[-5000:]}")
                code = code or 1
        finally:
            if server.process is not None:
                server.stop(signal.SIGKILL)
    return code


if __name__ == "__main__":
    sys.exit(main())
