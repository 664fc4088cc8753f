"""The one message catalogue (fermi_extension/locale): every msgid the code uses — Python,
templates, the pages' scripts, the lab extension — has a Chinese translation; what is generated
from the .po (the .pot, the lab's fermi.json) is not stale; the language is chosen as documented."""

from __future__ import annotations

import json
import re

import pytest

from fermi_extension import i18n


@pytest.fixture(scope="module")
def extracted():
    return i18n.extract()


@pytest.fixture(scope="module")
def chinese():
    return i18n.read_catalog("zh_CN")


def ids(catalog) -> set:
    return {m.id if isinstance(m.id, str) else m.id[0] for m in catalog if m.id}


def test_every_msgid_used_in_the_code_has_a_chinese_translation(extracted, chinese):
    translated = {(m.id if isinstance(m.id, str) else m.id[0])
                  for m in chinese if m.id and not m.fuzzy
                  and (m.string if isinstance(m.string, str) else all(m.string))}
    used = ids(extracted)
    sources = {"fermi_extension/control_plane/templates", "fermi_extension/control_plane/static",
               "labextension/src", "fermi_extension/cli.py", "fermi_extension/widgets.py"}
    found = {path for m in extracted for path, _line in m.locations}
    for source in sources:  # extraction reaches every kind of file that shows strings
        assert any(path.startswith(source) for path in found), source
    missing = sorted(used - translated)
    assert not missing, (f"{len(missing)} msgid(s) without a Chinese translation: run "
                         f"`python -m fermi_extension.i18n extract`, translate them in "
                         f"{i18n.po_path('zh_CN')}, then `... compile`: {missing[:10]}")


def test_the_template_and_the_lab_json_are_not_stale(extracted, chinese):
    from babel.messages.pofile import read_po

    with (i18n.LOCALE_DIR / "fermi.pot").open("rb") as fh:
        assert ids(read_po(fh)) == ids(extracted), "run `python -m fermi_extension.i18n extract`"
    assert ids(chinese) == ids(extracted), "run `python -m fermi_extension.i18n extract`"
    on_disk = json.loads(i18n.lab_json_path("zh_CN").read_text(encoding="utf-8"))
    assert on_disk == i18n.lab_json("zh_CN"), "run `python -m fermi_extension.i18n compile`"


def placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"\{\w+(?::[^}]*)?\}|%\(\w+\)s|%\d", text))


def test_translations_keep_every_placeholder(chinese):
    for message in chinese:
        if message.id and isinstance(message.id, str) and message.string:
            assert placeholders(message.string) == placeholders(message.id), message.id


def test_gettext_speaks_one_language_per_locale():
    assert i18n.translations("zh_CN").gettext("Dashboard") == "仪表盘"
    assert i18n.translations("en").gettext("Dashboard") == "Dashboard"
    assert i18n.translations("zh_CN").gettext("not a msgid at all") == "not a msgid at all"


@pytest.mark.parametrize("setting, header, expected", [
    (None, None, "en"),
    (None, "", "en"),
    (None, "en-US,en;q=0.9", "en"),
    (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"),
    (None, "fr-FR,zh-TW;q=0.5,en;q=0.4", "zh_CN"),  # the best supported one, by weight
    (None, "en;q=0.2,zh;q=0.8", "zh_CN"),
    (None, "zh;q=0,en", "en"),  # q=0 means "not this one"
    (None, "fr, de", "en"),
    ("en", "zh-CN", "en"),  # the user's switch wins over the browser
    ("zh_CN", "en", "zh_CN"),
    ("klingon", "zh-CN", "zh_CN"),  # an unknown setting is ignored
])
def test_the_page_language_is_the_switch_then_accept_language_then_english(setting, header,
                                                                            expected):
    assert i18n.choose(setting, header) == expected


def test_widgets_and_cli_follow_fermi_language_then_the_lab_then_the_locale(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path))
    for name in ("FERMI_LANGUAGE", "LANGUAGE", "LC_ALL", "LANG"):
        monkeypatch.delenv(name, raising=False)
    assert i18n.language() == "en" and i18n.translate("Cancel") == "Cancel"
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert i18n.language() == "en"
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert i18n.translate("Cancel") == "取消"
    settings = tmp_path / "@jupyterlab" / "translation-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text('{\n // the lab\n "locale": "en"\n}')
    assert i18n.language() == "en"  # the lab's setting comes before the shell's locale
    monkeypatch.setenv("FERMI_LANGUAGE", "zh")
    assert i18n.translate("Submitted: job {id}").format(id="j1") == "已提交：任务 j1"


def test_the_lab_reads_the_same_catalogue_through_jupyterlab_server():
    """jupyterlab_server serves the lab's translator what the `jupyterlab.locale` entry point
    registers: the JSON generated from the .po."""
    from jupyterlab_server.translation_utils import get_language_pack

    data, message = get_language_pack("zh_CN")
    assert "fermi" in data, message
    assert data["fermi"]["Submit as training job"] == ["提交为训练任务"]
    assert data["fermi"][""]["domain"] == "fermi"


def test_pages_render_in_one_language_each():
    from fermi_extension.control_plane.pages import environment

    context = dict(prefix="/services/fermi/", user="bob", switch=[("?lang=en", "English", True)],
                   what="catalog")
    for language, lang in (("en", "en"), ("zh_CN", "zh-CN")):
        html = environment(language).get_template("forbidden.html").render(lang=lang, **context)
        assert f'lang="{lang}"' in html
        assert ("仅限管理员" in html) == (language == "zh_CN")
        assert ("admins only" in html) == (language == "en")
    # autoescaping: a user's name is text, never markup
    html = environment("en").get_template("forbidden.html").render(
        lang="en", **{**context, "user": "<script>x</script>"})
    assert "<script>x" not in html and "&lt;script&gt;x" in html
