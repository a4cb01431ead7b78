"""The ``hubft`` command.

Sub-commands: ``finetune``, ``push``, ``pull``, ``plot-lr``, ``config`` and ``hub serve``. Every ``--section.field``
flag of ``finetune`` / ``plot-lr`` / ``config`` is generated from :class:`hubft.FinetuneConfig`, so flags and config
fields cannot drift apart.

Exit codes: 0 success; 1 an unexpected internal error; 2 bad input (config, data, model, Hub, checkpoint: a
one-line cause and fix); 3 training stopped (a non-finite loss, a full disk: the checkpoints written so far are
intact); 75 preempted by SIGTERM after writing a checkpoint (resume with ``--train.resume latest``); 130
interrupted. ``--debug`` shows tracebacks. The README's "Error messages" table lists the messages.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from hubft.config import FinetuneConfig, config_fields, config_to_dict, load_config
from hubft.errors import HubftError, one_line, unwrap_worker_error
from hubft.files import make_dir

__all__ = ["main", "build_parser", "parse_finetune_args", "add_config_flags"]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--section.field`` flag per config field (values are type-checked later)."""
    parser.add_argument("--config", "-c", default=None, help="YAML config file; flags override its values.")
    group = parser.add_argument_group("config fields (override the YAML)")
    for dotted, f in config_fields().items():
        group.add_argument(f"--{dotted}", dest=dotted, default=argparse.SUPPRESS, metavar="VALUE",
                           help=f.metadata.get("help", "").replace("%", "%%"))  # argparse %-formats help


def _overrides(ns: argparse.Namespace) -> dict:
    fields = config_fields()
    return {k: v for k, v in vars(ns).items() if k in fields}


def _strict_parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    ns, extra = parser.parse_known_args(argv)
    if extra:
        import difflib

        flags = [f"--{k}" for k in config_fields()]
        bad = extra[0]
        close = difflib.get_close_matches(bad.split("=")[0], flags, n=3)
        raise HubftError(f"unknown argument {bad!r}",
                         fix=(f"did you mean {', '.join(close)}? " if close else "") + "see `hubft finetune --help`")
    return ns


def parse_finetune_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """Parse ``--config FILE`` and ``--section.field value`` flags into a validated :class:`FinetuneConfig`.

    Used by ``recipes/finetune.py`` and ``hubft finetune``.

    Raises:
        HubftError: An unknown flag or key, a badly typed value, or an unreadable config file.
    """
    # No abbreviations: `--train.epoch` must be refused as a typo, not taken for `--train.epochs`.
    parser = argparse.ArgumentParser(prog="finetune", description="Fine-tune a backbone (see hubft.FinetuneConfig).",
                                     allow_abbrev=False)
    add_config_flags(parser)
    parser.add_argument("--debug", action="store_true", help="Show tracebacks.")
    ns = _strict_parse(parser, argv)
    return load_config(ns.config, _overrides(ns))


def _cmd_finetune(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.train.finetune import finetune

    config = parse_finetune_args(rest)
    result = finetune(config)
    print(f"hubft: finished; model in {result.output_dir}" + (f", pushed to {result.url}" if result.url else ""))
    return 0


def _cmd_push(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.hub.push import push_to_hub

    url = push_to_hub(args.output_dir, args.repo_id, private=args.private or None, revision=args.revision,
                      create_pr=args.create_pr, commit_message=args.commit_message)
    print(f"hubft: pushed {args.output_dir} to {url}")
    return 0


def _cmd_pull(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.hub.push import pull_from_hub

    if args.output_dir is not None:
        make_dir(args.output_dir, key="--output-dir")
    path = pull_from_hub(args.repo_id, args.output_dir, revision=args.revision)
    print(f"hubft: pulled {args.repo_id} into {path}")
    return 0


def _cmd_plot_lr(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.optim import plot_all_schedules
    from hubft.train.lr_preview import plot_config_lr

    make_dir(Path(args.output).resolve().parent, key="the folder of --output",
             fix="give --output a path in a directory you can create and write to")
    if args.all:
        plot_all_schedules(args.output)
        print(f"hubft: wrote {args.output}")
        return 0
    sub = argparse.ArgumentParser(prog="hubft plot-lr", allow_abbrev=False)
    add_config_flags(sub)
    ns = _strict_parse(sub, rest)
    config = load_config(ns.config, _overrides(ns))
    png, csv = plot_config_lr(config, args.output, updates_per_epoch=args.updates_per_epoch)
    print(f"hubft: wrote {png} and {csv}")
    return 0


def _cmd_config(args: argparse.Namespace, rest: list[str]) -> int:
    import yaml

    sub = argparse.ArgumentParser(prog="hubft config", allow_abbrev=False)
    add_config_flags(sub)
    ns = _strict_parse(sub, rest)
    print(yaml.safe_dump(config_to_dict(load_config(ns.config, _overrides(ns))), sort_keys=False), end="")
    return 0


def _cmd_hub_serve(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.hub.server import serve

    make_dir(args.root, key="--root")
    serve(args.root, host=args.host, port=args.port, users_file=args.users, access_log=args.access_log)
    return 0


def _cmd_hub_token(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.hub.server import add_token, revoke_token

    if args.token_command == "add":
        token = add_token(args.users, args.user, args.name, role=args.role)
        print(f"hubft: added {args.role} token {args.name!r} for {args.user} to {args.users}; it is shown only once:")
        print(token)
    else:
        revoke_token(args.users, args.user, args.name)
        print(f"hubft: revoked token {args.name!r} of {args.user} in {args.users}")
    return 0


def _cmd_hub_fsck(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.errors import HubError
    from hubft.hub.server import fsck

    report = fsck(args.root)
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"hubft: {report.summary()}")
    if report.problems:
        raise HubError(f"hub root {args.root!r} has {len(report.problems)} problem(s), listed above",
                       fix="restore the root from a backup, or remove what the problems name and re-upload it")
    return 0


def _cmd_hub_mirror(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.hub.mirror import mirror

    result = mirror(args.repo_id, args.source, args.dest, repo_type=args.repo_type,
                    source_token=args.from_token or os.environ.get("HUBFT_MIRROR_FROM_TOKEN"),
                    dest_token=args.to_token or os.environ.get("HUBFT_MIRROR_TO_TOKEN"))
    print(f"hubft: mirrored {args.repo_id} from {args.source} to {args.dest}: {len(result.branches)} branch(es), "
          f"{len(result.tags)} tag(s), {result.downloaded} file(s) downloaded, {result.commits} commit(s) made")
    return 0


def _add_hub_commands(sub: argparse._SubParsersAction) -> None:
    """The ``hub`` group: serve a local Hub, manage its tokens, check its storage, mirror repos into it."""
    hub = sub.add_parser("hub", help="A local Hub-compatible server, for tests or a team without internet access.")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)
    s = hub_sub.add_parser("serve", help="Serve a local Hub from a directory.")
    s.add_argument("--root", required=True, help="Directory holding the repos (created if missing).")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--users", default=None, help="A team's users file: serve its tokens (see `hub token add`).")
    s.add_argument("--access-log", default=None, help="Append one JSON line per request to this file.")
    s.set_defaults(func=_cmd_hub_serve)

    s = hub_sub.add_parser("token", help="Add or revoke a user's token in a users file.")
    token_sub = s.add_subparsers(dest="token_command", required=True)
    for name, text in (("add", "Create a token (printed once; only its sha256 is stored)."),
                       ("revoke", "Remove a token; a running hub refuses it from its next request on.")):
        t = token_sub.add_parser(name, help=text)
        t.add_argument("--users", required=True, help="The users file (created by the first `add`).")
        t.add_argument("--user", required=True, help="The user name (added by `add` when new).")
        t.add_argument("--name", required=True, help="A label for the token, e.g. the machine it is for.")
        if name == "add":
            t.add_argument("--role", choices=("read", "write"), default="read")
        t.set_defaults(func=_cmd_hub_token)

    s = hub_sub.add_parser("fsck", help="Check a hub root: every object's sha256, every ref, commit and file.")
    s.add_argument("--root", required=True)
    s.set_defaults(func=_cmd_hub_fsck)

    s = hub_sub.add_parser("mirror", help="Copy a repo (all branches and tags, LFS included) between hubs/bundles.")
    s.add_argument("repo_id")
    s.add_argument("--from", dest="source", required=True, help="A Hub URL, or a bundle folder.")
    s.add_argument("--to", dest="dest", required=True, help="A Hub URL, or a bundle folder (created if missing).")
    s.add_argument("--repo-type", default="model", help="model or dataset.")
    s.add_argument("--from-token", default=None, help="Token for --from (default: $HUBFT_MIRROR_FROM_TOKEN).")
    s.add_argument("--to-token", default=None, help="Token for --to (default: $HUBFT_MIRROR_TO_TOKEN).")
    s.set_defaults(func=_cmd_hub_mirror)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; sub-commands that take config flags parse them from the remaining arguments."""
    p = argparse.ArgumentParser(prog="hubft", description="Fine-tune image backbones from the Hub and share them.")
    p.add_argument("--debug", action="store_true", help="Show tracebacks on errors.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("finetune", help="Fine-tune a backbone: --config FILE [--section.field VALUE ...]",
                       add_help=False)
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser("push", help="Push a finished run directory to a Hub repo in one commit.")
    s.add_argument("output_dir")
    s.add_argument("repo_id")
    s.add_argument("--private", action="store_true", help="Create the repo private.")
    s.add_argument("--revision", default=None, help="Branch to push to.")
    s.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    s.add_argument("--commit-message", default=None)
    s.set_defaults(func=_cmd_push)

    s = sub.add_parser("pull", help="Download a model repo.")
    s.add_argument("repo_id")
    s.add_argument("-o", "--output-dir", default=None)
    s.add_argument("--revision", default=None)
    s.set_defaults(func=_cmd_pull)

    s = sub.add_parser("plot-lr", help="Plot each parameter group's LR curve for a config (or --all schedules).")
    s.add_argument("-o", "--output", default="lr.png", help="PNG path (a CSV is written beside it).")
    s.add_argument("--all", action="store_true", help="Draw every registered schedule with its defaults.")
    s.add_argument("--updates-per-epoch", type=int, default=100,
                   help="Optimizer updates per epoch to assume (the data is not loaded).")
    s.set_defaults(func=_cmd_plot_lr)

    s = sub.add_parser("config", help="Print the resolved config (defaults + YAML + flags).")
    s.set_defaults(func=_cmd_config)

    _add_hub_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hubft`` command; returns the exit code (see the module docstring)."""
    code = _run(argv)
    if code != 0:
        # A failed run leaves its objects (the model, a DDP wrapper holding the process group and its threads) in
        # reference cycles through the error's traceback. Free them now rather than during interpreter shutdown,
        # where tearing down a process group's threads can abort the process after the error was printed.
        gc.collect()
    return code


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HUBFT_DEBUG") == "1"
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args([a for a in argv if a != "--debug"])
        if args.command == "finetune" and rest in (["-h"], ["--help"]):
            parse_finetune_args(["--help"])
        if rest and args.command not in ("finetune", "plot-lr", "config"):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args, rest)
    except HubftError as e:
        if debug:
            traceback.print_exc()
        print(f"hubft: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hubft: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"hubft: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


def _one_line(error: HubftError) -> str:
    """The error as one line; one raised in a DataLoader worker arrives re-raised with the worker's traceback."""
    return one_line(unwrap_worker_error(error), limit=10_000)


if __name__ == "__main__":
    sys.exit(main())
