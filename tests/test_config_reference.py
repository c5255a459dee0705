"""The configuration reference is generated from the code, and docs/configuration.md holds it."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from m3sgg import config as config_module
from m3sgg.config_reference import (
    BEGIN_MARKER,
    END_MARKER,
    UNDOCUMENTED,
    config_rows,
    embed,
    field_comments,
    main,
    render_config_reference,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_docs_configuration_md_matches_the_code():
    """Fails when a config field or a built-in model's argument changed without the page.

    Fix: ``python -m m3sgg.config_reference --write docs/configuration.md``.
    """
    current = DOC.read_text(encoding="utf-8")
    assert embed(current, render_config_reference()) == current, (
        "docs/configuration.md is stale: run "
        "`python -m m3sgg.config_reference --write docs/configuration.md`"
    )


def test_every_config_key_is_listed_once_with_a_meaning():
    rows = [row for _, section in config_rows() for row in section]
    keys = [row.key for row in rows]
    expected = []
    for f in dataclasses.fields(config_module.Config):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            expected += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(default)]
        else:
            expected.append(f.name)
    assert sorted(keys) == sorted(expected)
    assert len(set(keys)) == len(keys)
    undocumented = [row.key for row in rows if row.meaning == UNDOCUMENTED or not row.meaning]
    assert not undocumented, f"config fields without a trailing # comment: {undocumented}"


def test_builtin_model_options_are_documented():
    text = render_config_reference()
    assert UNDOCUMENTED not in text
    for key in ("model.options.d_model", "model.options.hidden_dim", "model.options.layers"):
        assert f"`{key}`" in text


def test_rows_carry_types_defaults_and_comments():
    rows = {row.key: row for _, section in config_rows() for row in section}
    assert rows["optim.lr"].type == "float"
    assert rows["optim.lr"].default == "0.001"
    assert rows["optim.lr"].meaning == "initial learning rate"
    assert rows["run.name"].default == "null"
    assert rows["eval.constraints"].default == '["with", "semi", "no"]'
    assert rows["plugins"].default == "[]"


def test_field_comments_reads_trailing_comments_only():
    source = textwrap.dedent(
        """
        class A:
            # a comment above is not the meaning
            x: int = 1  # the meaning of x
            y: list[int] = field(
                default_factory=list
            )  # on the last line of a multi-line field
            z: str = "#not a comment"
        """
    )
    assert field_comments(source) == {
        ("A", "x"): "the meaning of x",
        ("A", "y"): "on the last line of a multi-line field",
    }


def test_cells_escape_pipes_and_html_like_text():
    text = render_config_reference(models=False)
    assert "`str \\| None`" in text  # a pipe would split the table cell
    assert "\\<dataset>" in text  # <dataset> would vanish as an HTML tag


def test_embed_replaces_between_markers_and_refuses_without_them():
    doc = f"intro\n{BEGIN_MARKER}\nold\n{END_MARKER}\nrest\n"
    assert embed(doc, "new\n") == f"intro\n{BEGIN_MARKER}\n\nnew\n\n{END_MARKER}\nrest\n"
    with pytest.raises(ValueError, match="BEGIN"):
        embed("no markers", "x")


def test_check_and_write(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    page.write_text(f"# Configuration\n{BEGIN_MARKER}\nstale\n{END_MARKER}\n")
    assert main(["--check", str(page)]) == 1
    assert main(["--write", str(page)]) == 0
    assert main(["--check", str(page)]) == 0
    assert "### `optim`" in page.read_text()
    capsys.readouterr()
    assert main([]) == 0
    assert capsys.readouterr().out == render_config_reference()
