"""`{key}` templates: parsing, shell quoting in commands, raw values in ids."""

from __future__ import annotations

import pytest

from exq.model.template import JOB_ID_RE, TemplateError, command_placeholders, placeholders, render_cmd, render_id


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


@pytest.mark.parametrize("template, expected", [
    ("run {v}", "run 'a b'"),
    ('run "--name={v}"', 'run "--name=a b"'),
    ("run '--name={v}'", "run '--name=a b'"),
])
def test_render_cmd_quotes_for_the_context_of_each_placeholder(template: str, expected: str) -> None:
    assert render_cmd(template, {"v": "a b"}, job_id="j", phase="p") == expected


def test_render_cmd_escapes_what_double_and_single_quotes_would_expand_or_end() -> None:
    assert render_cmd('x "{v}"', {"v": '$(a)`b`"\\'}, job_id="j", phase="p") == 'x "\\$(a)\\`b\\`\\"\\\\"'
    assert render_cmd("x '{v}'", {"v": "it's"}, job_id="j", phase="p") == "x 'it'\\''s'"
    assert render_cmd("{v} run", {"v": "LD_PRELOAD=x"}, job_id="j", phase="p") == "'LD_PRELOAD=x' run"


@pytest.mark.parametrize("template, expected", [
    ("echo `ls {v}`", r"placeholder \{v\} is inside `...` \(use \$\(...\) instead\)"),
    ("echo ${{X:-{v}}}", r"is inside \$\{...\}"),
    ("echo $(( {v} + 1 ))", r"is inside \$\(\(...\)\) \(arithmetic\)"),
    ("echo hi # {v}", "is in a shell comment"),
    ("echo \\{v}", "follows a backslash, which would escape the quoting of the value; remove the backslash"),
    ('echo "\\{v}"', "follows a backslash"),
    ("echo ${v}", r"follows '\$': write \$\{\{v\}\} for the shell variable"),
    ("cat <<EOF\n{v}\nEOF", r"after a here-document \(<<\); put placeholders before it"),
    ("echo $'{v}'", r"after \$'...'"),
    ("echo $(case a in a) echo {v};; esac)", r"after 'case' inside \$\(...\)"),
    ('echo "{v}', 'a " quote is never closed'),
    ("echo '{v}", "a ' quote is never closed"),
    ("echo $(echo {v}", r"\$\( is never closed"),
    ("echo `date", "a ` is never closed"),
])
def test_command_placeholders_refuses_what_cannot_be_quoted(template: str, expected: str) -> None:
    with pytest.raises(TemplateError, match=expected):
        command_placeholders(template)


@pytest.mark.parametrize("template", [
    "python x.py --out \"$(pwd)/{v}\" --host `hostname` --user ${{USER}} --n $((2 * 3)) {v}",
    "echo it\\'s {v} # a comment's quote\necho {v}",
    "echo $(echo \"$(echo '{v}')\" ) {v} <<< here",
])
def test_command_placeholders_accepts_placeholders_beside_what_it_cannot_quote(template: str) -> None:
    assert command_placeholders(template) == ["v"]


def test_format_width_and_rendered_length_are_bounded() -> None:
    with pytest.raises(TemplateError, match="a width or precision above 1000 is not allowed"):
        placeholders("{x:0>1000000000}")
    with pytest.raises(TemplateError, match="a width or precision above 1000"):
        placeholders("{x:.1001f}")
    assert render_id("j{x:0>5}", {"x": 1}, phase="p") == "j00001"
    with pytest.raises(TemplateError, match="the rendered text is longer than 64 KiB"):
        render_cmd("echo {x}{x}", {"x": "y" * 40000}, job_id="j", phase="p")


def test_a_trailing_newline_is_not_part_of_a_valid_job_id() -> None:
    assert JOB_ID_RE.match("a") and not JOB_ID_RE.match("a\n")
    with pytest.raises(TemplateError, match=r"id 'a\\n' of the job with x='a\\n'"):
        render_id("{x}", {"x": "a\n"}, phase="p")
