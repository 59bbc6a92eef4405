"""The documentation: every public name is documented and in the API reference, and the
method table is generated from the registry."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]


_tool = load_tool


def test_every_public_module_is_in_the_reference_and_every_public_name_documented():
    assert _tool("api_coverage").problems() == []


def test_the_coverage_check_finds_a_planted_gap(tmp_path, monkeypatch):
    package = tmp_path / "planted"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "sub" / "__init__.py").write_text('"""Its subpackage."""\n')
    (package / "sub" / "tools.py").write_text(
        '"""Tools."""\n\n'
        "def bare(x):\n    return x\n\n\n"
        'class Box:\n    """A box."""\n\n    def open(self):\n        return 1\n\n\n'
        "def _private(x):\n    return x\n"
    )
    (package / "_hidden.py").write_text("def secret():\n    return 1\n")
    api = tmp_path / "api"
    api.mkdir()
    (api / "index.md").write_text("# API\n\n::: planted\n\n::: planted.sub\n\n::: planted.gone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = _tool("api_coverage").problems("planted", api)
    assert sorted(found) == sorted(
        [
            f"module planted.sub.tools is in no page of {api}",
            "::: planted.gone names no public module",
            "planted.sub.tools.bare has no docstring",
            "planted.sub.tools.Box.open has no docstring",
        ]
    )


def test_the_method_table_is_the_registry_rendered():
    tool = _tool("method_table")
    page = tool.PAGE.read_text()
    assert tool.updated(page) == page, "run: python tools/method_table.py"
    from ifa_jax import cams

    table = tool.render()
    for method in cams.REGISTRY.values():
        assert f"| `{method.name}`" in table and method.summary.replace("|", "\\|") in table
    stale = page.replace(table.splitlines()[2] + "\n", "")  # a row written by hand, lost
    assert stale != page and tool.updated(stale) == page
    assert tool.main(["--check", str(tool.PAGE)]) == 0


def _table_defaults(page: str, header: str) -> dict[str, str]:
    rows = page.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    names = [c[0].strip("`") for c in cells]
    assert len(names) == len(set(names)), f"a field is listed twice: {names}"
    return {c[0].strip("`"): c[1].strip("`") for c in cells}


def test_the_runner_page_lists_every_config_field_with_its_default():
    import dataclasses

    from ifa_jax.runner.config import Config
    from ifa_jax.runner.train import TrainConfig

    page = (ROOT / "docs" / "runner.md").read_text()
    for header, config in (
        ("| field | default | meaning |", Config()),
        ("| `train` field | default | meaning |", TrainConfig()),
    ):
        written = _table_defaults(page, header)
        fields = [f.name for f in dataclasses.fields(config)]
        assert sorted(written) == sorted(fields)
        for name in fields:
            value = eval(written[name], {"TrainConfig": TrainConfig})
            assert value == getattr(config, name), f"{name}: the page says {written[name]}"
