"""The ``hubft`` command.

Sub-commands: ``finetune``, ``push``, ``pull``, ``merge``, ``eval``, ``predict``, ``export``, ``plot-lr``,
``lr-find``, ``config``, and the local Hub's ``hub serve`` / ``hub token add|revoke`` / ``hub fsck`` /
``hub mirror``. Every ``--section.field`` flag of ``finetune`` / ``plot-lr`` / ``lr-find`` / ``config`` is generated
from :class:`hubft.FinetuneConfig`, so flags and config fields cannot drift apart.

Exit codes: 0 success; 1 an unexpected internal error; 2 bad input (config, data, model, Hub, checkpoint: a
one-line cause and fix); 3 training stopped (a non-finite loss, a full disk: the checkpoints written so far are
intact); 75 preempted by SIGTERM after writing a checkpoint (resume with ``--train.resume latest``); 130
interrupted. ``--debug`` shows tracebacks. docs/errors.md lists the bad-input messages.
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


def _cmd_merge(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.hub.merge import merge_adapter_dir
    from hubft.hub.push import push_to_hub
    from hubft.hub.repo_id import check_repo_id

    if args.push is not None:
        check_repo_id(args.push, key="--push")
    report = merge_adapter_dir(args.adapter, args.output_dir, repo_id=args.push, revision=args.revision)
    print(f"hubft: merged {args.adapter} into its backbone: {report.path} (logits within {report.max_abs_diff:.2g} "
          "of the adapter model's)")
    if args.push is not None:
        print(f"hubft: pushed to {push_to_hub(report.path, args.push, private=args.private or None)}")
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


def _cmd_lr_find(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.train.lr_find import lr_find, suggested_config

    sub = argparse.ArgumentParser(prog="hubft lr-find", allow_abbrev=False)
    add_config_flags(sub)
    ns = _strict_parse(sub, rest)
    config = load_config(ns.config, _overrides(ns))
    result = lr_find(config, start=args.start, end=args.end, num_steps=args.num_steps, output_dir=args.output_dir)
    out = Path(args.output_dir) if args.output_dir else Path(config.train.output_dir) / "lr-find"
    if not _is_main_process():
        return 0
    shown = {"steepest": result.steepest, "valley": result.valley}
    print("hubft: lr-find: " + ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} -" for k, v in shown.items())
          + f" (optim.lr; {len(result.lrs)} steps{', stopped when the loss diverged' if result.stopped_early else ''})"
          + f"; curve in {out / 'lr_find.png'} and {out / 'lr_find.csv'}")
    if args.write:
        import yaml

        from hubft.files import atomic_write_text

        new, diff = suggested_config(config, result)
        atomic_write_text(out / "config.lr-find.yaml", yaml.safe_dump(config_to_dict(new), sort_keys=False))
        print(diff, end="")
        print(f"hubft: wrote {out / 'config.lr-find.yaml'}")
    return 0


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    for flag, help in (("--data.name", "Hub dataset id"), ("--data.path", "local image folder, CSV or parquet file"),
                       ("--data.eval_split", "the split (default: validation / valid / val / eval / test, else train)"),
                       ("--data.revision", "Hub dataset revision"), ("--data.image_column", "image column"),
                       ("--data.label_column", "label column"),
                       ("--data.classes", "keep only these classes, e.g. '[cat, dog]' (eval)")):
        parser.add_argument(flag, dest=flag.removeprefix("--").replace(".", "_"), default=None, help=help + ".")
    parser.add_argument("--tta", default=None, help="Test-time augmentation: hflip, multiscale or both "
                                                    "(hflip,multiscale); the logits are averaged. Off by default.")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per forward pass.")
    parser.add_argument("--revision", default=None, help="Revision of a Hub model.")


def _cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.inference import evaluate_model, load_inference_model, push_eval_results

    model = load_inference_model(args.model, revision=args.revision)
    report = evaluate_model(model, name=args.data_name, path=args.data_path, split=args.data_eval_split,
                            revision=args.data_revision, image_column=args.data_image_column,
                            label_column=args.data_label_column, batch_size=args.batch_size, tta=args.tta,
                            classes=_yaml_list(args.data_classes, "--data.classes"), output_dir=args.output_dir)
    shown = [m for m in model.task.card_metrics if isinstance(report.metrics.get(m.key), (int, float))]
    width = max([len(m.name) for m in shown] + [len("examples")])
    where = report.dataset.get("dataset") or "the dataset"
    print(f"hubft: {model.spec} on {where} (split {report.dataset.get('eval_split')})")
    for m in shown:
        print(f"  {m.name:<{width}}  {report.metrics[m.key]:.4f}")
    print(f"  {'examples':<{width}}  {report.metrics.get('num_samples')}")
    if args.output_dir:
        print(f"hubft: wrote {Path(args.output_dir) / 'metrics.json'}")
    if args.push or args.create_pr:
        repo_id = args.repo_id or model.repo_id
        if repo_id is None:
            raise HubftError(f"--push needs the model's Hub repo, and {model.spec!r} is not one",
                             fix="name the model as owner/name (or hf-hub:owner/name), or pass --repo-id")
        print(f"hubft: results pushed: {push_eval_results(report, repo_id, create_pr=args.create_pr)}")
    return 0


def _yaml_list(value: str | None, flag: str) -> list | None:
    import yaml

    if value is None:
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, list):
        raise HubftError(f"{flag} {value!r} is not a list", fix=f"write it as YAML, e.g. {flag} '[cat, dog]'")
    return parsed


def _cmd_predict(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.inference import predict, write_predictions

    write_predictions([], args.output, check_only=True)  # a bad --output fails before the images are run
    rows = predict(args.model, args.inputs, name=args.data_name, path=args.data_path, split=args.data_eval_split,
                   top_k=args.top_k, batch_size=args.batch_size, tta=args.tta)
    text = write_predictions(rows, args.output)
    if text is not None:
        print(text, end="")
    else:
        print(f"hubft: wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace, rest: list[str]) -> int:
    from hubft.inference import ONNX_TOLERANCE, export_onnx

    report = export_onnx(args.model, args.output, opset=args.opset)
    diffs = ", ".join(f"batch {b}: {d:.2g}" for b, d in report.max_abs_diff.items())
    print(f"hubft: wrote {report.path}; onnxruntime vs torch, max abs difference {diffs} (tolerance "
          f"{ONNX_TOLERANCE:g})")
    return 0


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


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
    _add_training_commands(sub)
    _add_inference_commands(sub)
    _add_hub_commands(sub)
    return p


def _add_training_commands(sub) -> None:
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

    s = sub.add_parser("merge", help="Merge an adapter (a run directory or Hub repo) into its backbone: a plain "
                                     "timm model directory, loadable without peft.")
    s.add_argument("adapter", help="An adapter run's directory, local-dir:PATH, owner/name or hf-hub:owner/name.")
    s.add_argument("output_dir", help="Where the merged model goes (model.safetensors, config.json, card).")
    s.add_argument("--push", metavar="OWNER/NAME", default=None, help="Push the merged model to this repo.")
    s.add_argument("--private", action="store_true", help="Create the pushed repo private.")
    s.add_argument("--revision", default=None, help="Revision of a Hub adapter.")
    s.set_defaults(func=_cmd_merge)

    s = sub.add_parser("plot-lr", help="Plot each parameter group's LR curve for a config (or --all schedules).")
    s.add_argument("-o", "--output", default="lr.png", help="PNG path (a CSV is written beside it).")
    s.add_argument("--all", action="store_true", help="Draw every registered schedule with its defaults.")
    s.add_argument("--updates-per-epoch", type=int, default=100,
                   help="Optimizer updates per epoch to assume (the data is not loaded).")
    s.set_defaults(func=_cmd_plot_lr)

    s = sub.add_parser("lr-find", help="LR range test of a config: sweep the LR of every parameter group (keeping "
                                       "their ratios), suggest one, plot the loss curve.")
    # --start-lr too: under torchrun, whose own --start-method makes --start ambiguous for its parser.
    s.add_argument("--start", "--start-lr", dest="start", type=float, default=1e-7, help="First optim.lr of the sweep.")
    s.add_argument("--end", "--end-lr", dest="end", type=float, default=10.0, help="Last optim.lr of the sweep.")
    s.add_argument("--num-steps", type=int, default=100, help="Updates in the sweep (at most).")
    s.add_argument("-o", "--output-dir", default=None,
                   help="Where the curve goes (default: <train.output_dir>/lr-find).")
    s.add_argument("--write", action="store_true",
                   help="Write config.lr-find.yaml with the suggested optim.lr (and head_lr, same ratio); print the diff.")
    s.set_defaults(func=_cmd_lr_find)

    s = sub.add_parser("config", help="Print the resolved config (defaults + YAML + flags).")
    s.set_defaults(func=_cmd_config)


def _add_inference_commands(sub) -> None:
    s = sub.add_parser("eval", help="Evaluate a trained model on a dataset split: metrics.json, a table, and "
                                    "with --push the results in its model card.")
    s.add_argument("model", help="hf-hub:owner/name, owner/name, local-dir:PATH or a run directory.")
    _add_data_flags(s)
    s.add_argument("-o", "--output-dir", default=None, help="Write metrics.json and confusion_matrix.png here.")
    s.add_argument("--push", action="store_true", help="Add the results to the model card's model-index (a pull "
                                                         "request when the token may not write to the repo).")
    s.add_argument("--create-pr", action="store_true", help="Push the results as a pull request.")
    s.add_argument("--repo-id", default=None, help="The repo whose card gets the results (default: the model's).")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("predict", help="Top-k labels of images (files, folders, globs) or of a dataset split.")
    s.add_argument("model", help="hf-hub:owner/name, owner/name, local-dir:PATH or a run directory.")
    s.add_argument("inputs", nargs="*", help="Image files, folders (searched recursively) or glob patterns.")
    _add_data_flags(s)
    s.add_argument("--top-k", type=int, default=5, help="Labels per image.")
    s.add_argument("-o", "--output", default=None, help="out.jsonl or out.csv (default: JSON lines on stdout).")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("export", help="Export a trained model to ONNX (checked against torch with onnxruntime).")
    s.add_argument("model", help="hf-hub:owner/name, owner/name, local-dir:PATH or a run directory.")
    s.add_argument("--format", choices=["onnx"], default="onnx", help="Only onnx for now.")
    s.add_argument("-o", "--output", default="model.onnx", help="Where the file goes.")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
    s.set_defaults(func=_cmd_export)


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
        if rest and args.command not in ("finetune", "plot-lr", "config", "lr-find"):
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
