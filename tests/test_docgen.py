"""docs/specs.md and examples/reconciler.schema.json are generated: they must equal what
the generators print now, and every field of every model must be described there."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from reconciler import docgen
from reconciler.cli import app
from reconciler.debian import query
from reconciler.spec import DOCUMENT, KINDS, Metadata

REPO = Path(__file__).resolve().parent.parent
REGENERATE = "regenerate it: python -m reconciler.docgen > docs/specs.md"


def test_specs_md_is_up_to_date():
    assert (REPO / "docs/specs.md").read_text() == docgen.markdown(), REGENERATE
    assert CliRunner().invoke(app, ["schema", "--markdown"]).stdout == docgen.markdown()


def test_the_schema_example_is_up_to_date():
    printed = CliRunner().invoke(app, ["schema"]).stdout
    assert (REPO / "examples/reconciler.schema.json").read_text() == printed, \
        "regenerate it: reconciler schema > examples/reconciler.schema.json"


def test_every_field_is_documented_with_a_description():
    text = docgen.markdown()
    seen = 0
    models = [("metadata", Metadata)] + [
        m for doc in KINDS.values() for m in docgen._models(doc.model_fields["spec"].annotation, "spec")]
    for path, model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} ({path}) has no description in reconciler/spec.py"
            assert f"| `{name}` |" in text, f"{path}.{name} is missing from docs/specs.md"
            seen += 1
    assert seen >= 50
    for field in ("series", "renamedFrom", "protect", "withSources", "withUdebs", "verifySignature",
                  "filterWithDeps", "latest", "renewBefore", "validFor", "checkValidUntil", "network", "limits"):
        assert f"| `{field}` |" in text, field
    assert "SERIES@latest" in text and "`\"minimal\"`" in text


def test_every_example_is_a_valid_document():
    for kind, example in docgen.EXAMPLES.items():
        docs = list(yaml.safe_load_all(example))
        assert docs and all(d["kind"] == kind for d in docs)
        for doc in docs:
            DOCUMENT.validate_python(doc)
            if doc["spec"].get("filter"):
                query.parse(doc["spec"]["filter"])
