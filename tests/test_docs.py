"""The docs that are generated from the code must match it."""

from lmspec.compiler.docgen import DOCS, code_table, key_tables, update_docs
from lmspec.compiler.schema import BLOCK_KINDS, ModelSpec


def test_generated_docs_are_up_to_date():
    # run `python -m lmspec.compiler.docgen` after changing the schema or the codes
    assert update_docs(check=True) == []


def test_key_tables_list_every_key_of_every_block_kind():
    tables = key_tables()
    for kind, model in BLOCK_KINDS.items():
        assert f"### `{kind}`" in tables
        for name, info in model.model_fields.items():
            assert f"| `{info.alias or name}` |" in tables, (kind, name)


def test_key_table_rows_carry_type_default_range_and_doc():
    row = next(line for line in key_tables().splitlines() if line.startswith("| `heads` |") and "attention heads" in line)
    assert row == "| `heads` | int | required | >= 1 | attention heads |"
    row = next(line for line in key_tables().splitlines() if line.startswith("| `norm_eps` |"))
    assert "`1e-05`" in row and "> 0" in row and "< 1" in row
    assert ModelSpec.model_fields["norm_eps"].description in row


def test_code_table_is_in_the_diagnostics_page():
    text = (DOCS / "diagnostics.md").read_text()
    for line in code_table().splitlines()[2:]:
        assert line in text
