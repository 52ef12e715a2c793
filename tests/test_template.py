"""`{key}` templates: parsing, shell quoting in commands, raw values in ids."""

from __future__ import annotations

import pytest

from exq.queue.template import TemplateError, placeholders, render_cmd, render_id


def test_placeholders_in_order_without_duplicates_or_literal_braces() -> None:
    assert placeholders("run {b} {a:.2f} {{c}} {b} {id}") == ["b", "a", "id"]


@pytest.mark.parametrize("template, expected", [
    ("{a.b}", "attribute and index access"),
    ("{a[0]}", "attribute and index access"),
    ("{a!r}", "conversions are not allowed"),
    ("{}", "empty placeholder"),
    ("{a", "malformed template"),
    ("a}", "malformed template"),
    ("{a:{w}}", "nested placeholders"),
])
def test_malformed_templates(template: str, expected: str) -> None:
    with pytest.raises(TemplateError, match=expected):
        placeholders(template)


def test_render_cmd_quotes_values_and_knows_id_and_phase() -> None:
    cmd = render_cmd("train {name} --lr {lr:.0e} --amp {amp} --tag {id}/{phase} {{x}}",
                     {"name": "my run; rm -rf /", "lr": 0.0003, "amp": True}, job_id="j1", phase="p")
    assert cmd == "train 'my run; rm -rf /' --lr 3e-04 --amp true --tag j1/p {x}"


def test_render_cmd_again_after_a_param_changes() -> None:
    assert render_cmd("run --bs {bs}", {"bs": 32}, job_id="j", phase="p") == "run --bs 32"


def test_render_cmd_unknown_placeholder_lists_available_names() -> None:
    with pytest.raises(TemplateError, match=r"unknown placeholder \{bs\}; available: lr, phase, id"):
        render_cmd("run {bs}", {"lr": 1}, job_id="j", phase="p")


def test_render_cmd_bad_format_spec() -> None:
    with pytest.raises(TemplateError, match=r"cannot format 'x' with format spec '\.2f'"):
        render_cmd("run {a:.2f}", {"a": "x"}, job_id="j", phase="p")


def test_render_id_inserts_values_raw_and_validates() -> None:
    assert render_id("{phase}-lr{lr}-{flag}", {"lr": 0.1, "flag": False}, phase="t") == "t-lr0.1-false"
    with pytest.raises(TemplateError, match=r"id 'a b' of the job with m=a b is not a valid job id"):
        render_id("{m}", {"m": "a b"}, phase="t")
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render_id("{id}", {}, phase="t")
