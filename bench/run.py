# `make bench`: how fast hubft is next to what you would write by hand, as ratios measured in one run.
#
#   python bench/run.py [--full] [--only train,pipeline,...] [--reps N] [--gpu]
#
# `make bench` (no flag) is the quick set for the developer's loop: one case per ratio, fewer repetitions, every
# noise floor kept (a few minutes on 2 cores). `make bench-full` (--full) is the long run behind the published
# tables: every case, 15 repetitions (about half an hour on 2 cores). Same table; the JSON goes to
# bench/results/bench-quick.json or bench-full.json, and the README block names the command that produced it.
#
# Every line is a ratio of two sides measured in the same process, alternating the sides, after a warm-up; the
# table shows the median of the paired ratios and their min-max. Absolute times are only context: this machine
# is shared and noisy. Results: a table here, bench/results/bench.json, and a markdown block for the README.
# Never part of the tests, and nothing here asserts a timing.
import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `bench` is a folder of the repo, not an installed package

# huggingface_hub, datasets and timm read these once, at import: a private HF_HOME keeps the benchmark's caches
# (and the local Hub's endpoint) away from the user's, and nothing talks to the internet.
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    HUB_PORT = _s.getsockname()[1]
SCRATCH = tempfile.TemporaryDirectory(prefix="hubft-bench-")
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}", HF_HOME=str(Path(SCRATCH.name) / "hf-home"),
                  HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_UPDATE_DOWNLOAD_COUNTS="0",
                  HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
                  TOKENIZERS_PARALLELISM="false")
os.environ.pop("HF_TOKEN", None)

import torch  # noqa: E402

from bench._timing import Row  # noqa: E402

# Every benchmark is a module bench/_<name>.py with run(reps, quick, device, **context) -> list[Row]; a new ratio
# is one more module and one more name here (context: what some benches need from this process, see CONTEXT).
BENCHES = ("train", "pipeline", "hub", "tta", "hardware", "inference", "adapters", "sharding", "segmentation", "wholerun")
QUICK_REPS, FULL_REPS, GPU_REPS = 6, 15, 10
# Extra keyword arguments of a bench's run(), by name; the others get none.
CONTEXT = {"hub": lambda: {"port": HUB_PORT, "scratch": Path(SCRATCH.name)}}


def machine(device: torch.device) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    import accelerate
    import timm

    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "timm": timm.__version__, "accelerate": accelerate.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    where = f"{info['gpu']} + " if "gpu" in info else ""
    return (f"{where}{info['cpu']}, {info['cores']} cores ({info['cpu_capability']}), torch {info['torch']}, "
            f"timm {info['timm']}, accelerate {info['accelerate']}, {info['date']}")


def fmt(value: float, unit: str) -> str:
    return f"{value:.1f} s" if unit == "s" else f"{value:.3f}{unit}" if unit == "x" else f"{value:.3g} {unit}"


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "metric", "case", "median", "min-max", "n", "cpu-time", "best", "target", "")
    lines = [(r.bench, r.metric, r.case, fmt(r.value, r.unit), f"{r.low:.2f}-{r.high:.2f}", str(r.pairs),
              f"{r.detail['cpu_time_ratio']['median']:.3f}" if "cpu_time_ratio" in r.detail else "-",
              f"{r.detail['best_time_ratio']:.3f}" if "best_time_ratio" in r.detail else "-",
              f">= {r.target}" if r.target is not None else "-", r.status) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    for line in [header, tuple("-" * w for w in widths), *lines]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    for r in rows:
        if r.note:
            print(f"  note [{r.bench} | {r.case}]: {r.note}")


def warn_if_noisy(rows: list[Row]) -> None:
    # Two identical loops should tie: when even their median ratio is off by more than 2%, a line 2% from its
    # target says nothing, and the run should be repeated on a quieter machine.
    for r in rows:
        if "noise floor" in r.metric and abs(r.value - 1) > 0.02:
            print(f"WARNING: the noise floor is {r.value:.3f} (min-max {r.low:.2f}-{r.high:.2f}): this run was too "
                  "noisy to resolve 2% differences; repeat it when the machine is quieter.")


def command(info: dict, quick: bool) -> str:
    return "make bench-gpu" if "gpu" in info else "make bench (quick set)" if quick else "make bench-full"


def markdown(rows: list[Row], info: dict, quick: bool) -> str:
    out = [f"Measured with `{command(info, quick)}`, {info['reps']} paired repetitions per line, on "
           f"{describe(info)}. Each ratio is the median of paired, interleaved repetitions in one run "
           "(min-max in brackets); > 1 means hubft is faster.", "",
           "| # | metric | case | ratio | min-max | target |", "|---|---|---|---|---|---|"]
    for r in rows:
        target = f">= {r.target} {'✓' if r.status == 'ok' else '✗'}" if r.target is not None else ""
        out.append(f"| {r.bench} | {r.metric} | {r.case} | {fmt(r.value, r.unit)} | {r.low:.2f}-{r.high:.2f} | "
                   f"{target} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description="hubft vs hand-written baselines: paired, interleaved speed ratios.")
    parser.add_argument("--full", action="store_true",
                        help="every case of every bench, 15 repetitions (default: the quick set, one case per ratio)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"paired repetitions per line (default: quick {QUICK_REPS}, --full {FULL_REPS}, "
                             f"--gpu {GPU_REPS})")
    parser.add_argument("--gpu", action="store_true", help="ratios 1-2 and resnet50 images/s on the CUDA GPU")
    parser.add_argument("--out", default=None,
                        help="the JSON results file (default: bench/results/bench-quick.json or bench-full.json)")
    args = parser.parse_args()
    quick = not args.full
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(only) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    reps = args.reps or (GPU_REPS if args.gpu else QUICK_REPS if quick else FULL_REPS)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: torch sees no CUDA device")
    device = torch.device("cuda" if args.gpu else "cpu")
    info = machine(device)
    print(f"hubft bench ({command(info, quick)}) on {describe(info)}; {reps} paired repetitions per line",
          flush=True)

    rows: list[Row] = []
    failed: list[str] = []
    seconds: dict[str, float] = {}
    load_before = os.getloadavg()
    started = time.perf_counter()
    if args.gpu:
        # On a GPU: ratios 1-2 with bf16 + channels-last, and resnet50's images/s next to timm's published number.
        from bench import _gpu

        rows += _gpu.run(reps, device)
    else:
        import importlib
        import traceback

        for name in BENCHES:
            if name not in only:
                continue
            print(f"[{name}]", flush=True)
            module = importlib.import_module(f"bench._{name}")
            start = time.perf_counter()
            try:
                rows += module.run(reps, quick, device, **CONTEXT.get(name, dict)())
            except Exception:  # one broken benchmark must not throw away the others' minutes of measurements
                traceback.print_exc()
                failed.append(name)
            seconds[name] = round(time.perf_counter() - start, 1)
    elapsed = time.perf_counter() - started
    info |= {"load_average_before": load_before, "load_average_after": os.getloadavg(), "seconds": elapsed,
             "reps": reps, "quick": quick, "command": command(info, quick), "failed": failed,
             "seconds_per_bench": seconds}

    print()
    print_table(rows)
    warn_if_noisy(rows)
    md = markdown(rows, info, quick)
    print("\nREADME block:\n")
    print(md)
    out = Path(args.out or ROOT / "bench" / "results" / f"bench-{'quick' if quick else 'full'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": [r.to_json() for r in rows], "markdown": md}, indent=1))
    print(f"\nwrote {out} ({elapsed / 60:.1f} min; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    if failed:
        print(f"FAILED: {', '.join(failed)} (tracebacks above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
