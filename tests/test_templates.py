import pytest

from fliprm import ConfigError, Template, get_template
from fliprm.templates import BUILTIN_TEMPLATES

# Written in the reference's style: str.format placeholders, doubled braces for literal JSON.
REF_SYSTEM = 'Infer the instruction. Output JSON: {{"REASONING": "...", "INFERRED INSTRUCTION": "..."}}'
REF_USER = "[Response]\n{response}\n\n[Your Inferred Instruction]\n"


def test_reference_style_files_render_unchanged(tmp_path):
    (tmp_path / "FLIP_SYSTEM.prompt").write_text(REF_SYSTEM)
    (tmp_path / "FLIP_USER.prompt").write_text(REF_USER)
    t = Template.from_files(system=tmp_path / "FLIP_SYSTEM.prompt", user=tmp_path / "FLIP_USER.prompt")
    system, user = t.render(response="Paris.")
    assert system["content"] == 'Infer the instruction. Output JSON: {"REASONING": "...", "INFERRED INSTRUCTION": "..."}'
    assert user["content"] == "[Response]\nParis.\n\n[Your Inferred Instruction]\n"


@pytest.mark.parametrize("evil", ["{response}", "{{literal}}", "{0}", "{context.__class__}", "}{", "{"])
def test_user_text_is_never_treated_as_a_template(evil):
    t = Template(name="t", system="", user="[R]\n{response}\n[C]\n{context}")
    (user,) = t.render(response=f"a {evil} b", context=evil)
    assert user["content"] == f"[R]\na {evil} b\n[C]\n{evil}"


def test_contextual_reference_template_accepts_output_placeholder():
    t = Template(name="ctx", system="", user="[Conversation History] {context}\n[AI Answer] {output}")
    assert t.render(response="yes", context="user: hi")[0]["content"].endswith("[AI Answer] yes")


@pytest.mark.parametrize("bad", ["{response.attr}", "{response[0]}", "{response!r}", "{response:>10}", "{}"])
def test_template_rejects_non_plain_placeholders(bad):
    with pytest.raises(ConfigError):
        Template(name="bad", system="", user=bad)


def test_missing_value_names_the_placeholder():
    with pytest.raises(ConfigError, match="context"):
        get_template("flip-contextual").render(response="x")


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_templates_load_and_hash(name):
    t = get_template(name)
    assert "response" in t.fields or "responses" in t.fields or "response_a" in t.fields
    # the hash covers the whole content: a one-character edit of either part changes it
    edited_user = Template(name=name, system=t.system, user=t.user + " ")
    edited_system = Template(name=name, system=t.system + " ", user=t.user)
    assert len({t.sha256, edited_user.sha256, edited_system.sha256}) == 3
    # and never collides with another built-in
    others = {get_template(n).sha256 for n in BUILTIN_TEMPLATES if n != name}
    assert t.sha256 not in others


def test_unknown_template_lists_builtins():
    with pytest.raises(ConfigError, match="flip-short"):
        get_template("nope")
