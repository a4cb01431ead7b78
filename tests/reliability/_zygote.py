"""A pre-imported interpreter that runs ``hubft`` commands in forked children: the kill tests' launcher.

Most of a tiny CLI run is spent importing torch, timm, datasets and accelerate. This process imports them once and
forks a child per command. The child runs exactly ``hubft.cli.main(argv)``, as the ``hubft`` console script does
after its imports, and is a process of its own for every fault: its own pid to SIGKILL or SIGTERM, its own fault
counters, and nothing computed before the fork (no thread pool exists yet, so forking is safe).

Protocol: one JSON request per line on stdin, ``{"argv": [...], "env": {...}, "cwd": "...", "log": "..."}``; the
child's stdout and stderr go to ``log``. Each request is answered with one JSON line, ``{"returncode": n}``,
negative when a signal killed the child (as :mod:`subprocess` reports it).
"""

import json
import os
import sys
import traceback

import matplotlib

matplotlib.use("Agg")

import accelerate  # noqa: E402,F401
import datasets  # noqa: E402,F401
import matplotlib.pyplot  # noqa: E402,F401
import timm  # noqa: E402,F401
import torch  # noqa: E402,F401

import hubft  # noqa: E402,F401
import hubft.cli  # noqa: E402
import hubft.hub.card  # noqa: E402,F401
import hubft.hub.push  # noqa: E402,F401
import hubft.train.finetune  # noqa: E402,F401
import hubft.train.plots  # noqa: E402,F401


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdout.reconfigure(line_buffering=True)
    sys.argv = ["hubft", *request["argv"]]
    return hubft.cli.main(request["argv"])


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
