"""The configuration reference (docs/configuration.md) lists every setting the code reads."""

from __future__ import annotations

from pathlib import Path

from datamcp.config.fields import FIELDS, markdown_table

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reference_lists_every_setting_with_its_env_var_and_flag() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    for field in FIELDS:
        assert f"`{field.key}`" in text, field.key
        assert f"`{field.env}`" in text, field.env
        if field.flag:
            assert f"`{field.flag}`" in text, field.flag


def test_reference_table_is_the_generated_one() -> None:
    """Regenerate with ``python -m datamcp.config.fields`` when a setting changes."""
    assert markdown_table() in REFERENCE.read_text(encoding="utf-8")
