"""The README's examples run as written (examples that drift are worse than none)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands():
    head = "\n".join(README.read_text().splitlines()[:12])
    assert "make demo" in head and "make test" in head


def test_python_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tour = next(b for b in blocks if "hubft.create_model" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(tour, "README.md", "exec"), namespace)
    assert namespace["model"].label_names == ["cat", "dog"]
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    assert namespace["sched"].num_updates == 10  # stepped like a torch scheduler, once per optimizer update


def test_every_cli_command_in_the_readme_table_exists():
    from hubft.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    named = set(re.findall(r"^\| `hubft ([a-z-]+)", README.read_text(), flags=re.M))
    assert named and named <= set(sub.choices)
