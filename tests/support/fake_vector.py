"""A stand-in for the `vector` binary, for the Vector sink's *supervision* tests (it is not Vector).

It accepts Vector's command line (`--config-json PATH …`), reads NDJSON lines from stdin and appends each
to an output file, then exits when stdin closes. Environment variables steer it:

FAKE_VECTOR_OUT           file that receives every stdin line, in order (required)
FAKE_VECTOR_RECORD        file that receives one JSON line per start: argv, config path, config text,
                          the AWS credential variables it saw, and its pid
FAKE_VECTOR_CRASH_AFTER   exit with code 3 after reading this many lines
FAKE_VECTOR_CRASH_MARKER  with CRASH_AFTER: crash only if this file does not exist yet (creates it),
                          so the restarted process behaves
FAKE_VECTOR_EXIT_CODE     exit code after stdin's EOF (default 0)
FAKE_VECTOR_HANG          after stdin's EOF, sleep this many seconds before exiting
FAKE_VECTOR_LOG_ERROR     after stdin's EOF, write this as an ERROR line of Vector's JSON log to stderr
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    argv = sys.argv[1:]
    config_path = argv[argv.index("--config-json") + 1] if "--config-json" in argv else ""
    config_text = ""
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            config_text = f.read()
        json.loads(config_text)  # a real vector would refuse a config that is not JSON
    record = os.environ.get("FAKE_VECTOR_RECORD")
    if record:
        seen = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        with open(record, "a", encoding="utf-8") as f:
            entry = {"argv": argv, "config_path": config_path, "config": config_text, "env": seen, "pid": os.getpid()}
            f.write(json.dumps(entry) + "\n")
    print(json.dumps({"level": "INFO", "message": "fake vector started", "pid": os.getpid()}), file=sys.stderr)
    sys.stderr.flush()

    crash_after = int(os.environ.get("FAKE_VECTOR_CRASH_AFTER", "0") or 0)
    marker = os.environ.get("FAKE_VECTOR_CRASH_MARKER")
    if crash_after and marker:
        if os.path.exists(marker):
            crash_after = 0
        else:
            open(marker, "w").close()

    out_path = os.environ["FAKE_VECTOR_OUT"]
    n = 0
    with open(out_path, "ab") as out:
        for line in sys.stdin.buffer:
            json.loads(line)  # every line must be one JSON object
            out.write(line)
            out.flush()
            n += 1
            if crash_after and n >= crash_after:
                print(json.dumps({"level": "ERROR", "message": "fake vector crashing"}), file=sys.stderr)
                sys.stderr.flush()
                os._exit(3)

    time.sleep(float(os.environ.get("FAKE_VECTOR_HANG", "0") or 0))
    error = os.environ.get("FAKE_VECTOR_LOG_ERROR")
    if error:
        print(json.dumps({"level": "ERROR", "message": error}), file=sys.stderr)
    return int(os.environ.get("FAKE_VECTOR_EXIT_CODE", "0") or 0)


if __name__ == "__main__":
    sys.exit(main())
