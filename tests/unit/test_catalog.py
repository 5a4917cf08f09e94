"""Catalogues: the shipped ones load; a bad one is one CatalogError naming file, entry and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.catalog import CatalogEntry, CatalogError, load_catalog
from services.embeddings import catalog as embeddings_catalog
from services.images import catalog as images_catalog
from services.text import catalog as text_catalog
from services.text.chat_template import ChatTemplate

ROOT = Path(__file__).resolve().parents[2]

TEXT_ENTRY = """
[[models]]
id = "{id}"
triton_model = "smollm2"
chat_template = "chat.jinja"
context_length = 8192
"""


def write(folder: Path, text: str, name: str = "catalog.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    (tmp_path / "chat.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    return tmp_path


# -- the catalogues in the repository ------------------------------------------------------------


def test_the_shipped_text_catalogues_load():
    (smollm2,) = text_catalog.load_catalog(ROOT / "services" / "text" / "catalog.toml").values()
    assert (smollm2.id, smollm2.triton_model, smollm2.context_length) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2", 8192)
    assert (smollm2.owned_by, smollm2.created, smollm2.description) == ("HuggingFaceTB", 1730419200, "")
    assert isinstance(smollm2.chat_template, ChatTemplate) and smollm2.tool_template is smollm2.tool_chat_template
    bench = text_catalog.load_catalog(ROOT / "services" / "text" / "catalog.bench.toml")
    assert list(bench) == ["HuggingFaceTB/SmolLM2-135M-Instruct", "hubmesh/echo-benchmark", "hubmesh/sim-llama-3-8b"]
    (sim,) = text_catalog.load_catalog(ROOT / "services" / "text" / "catalog.sim.toml").values()
    assert (sim.id, sim.triton_model, sim.context_length) == ("hubmesh/sim-llama-3-8b", "sim", 8192)
    assert sim.model_dump(exclude={"chat_template"}) == bench["hubmesh/sim-llama-3-8b"].model_dump(exclude={"chat_template"})
    echo = bench["hubmesh/echo-benchmark"]
    assert echo.tool_chat_template is None and echo.tool_template is echo.chat_template
    assert echo.chat_template.render([{"role": "user", "content": "hi"}])


def test_the_shipped_embeddings_and_images_catalogues_load():
    (minilm,) = embeddings_catalog.load_catalog(ROOT / "services" / "embeddings" / "catalog.toml").values()
    assert (minilm.dimensions, minilm.max_input_tokens, minilm.supports_dimensions) == (384, 254, False)
    (tiny,) = images_catalog.load_catalog(ROOT / "services" / "images" / "catalog.toml").values()
    assert tiny.sizes == ((256, 256), (512, 512), (1024, 1024), (1792, 1024), (1024, 1792))
    assert tiny.description.startswith("Tiny test pipeline")


def test_entries_are_frozen_and_one_error_type_serves_every_modality():
    (tiny,) = images_catalog.load_catalog(ROOT / "services" / "images" / "catalog.toml").values()
    with pytest.raises(ValidationError):
        tiny.id = "other"  # type: ignore[misc]
    assert text_catalog.CatalogError is embeddings_catalog.CatalogError is images_catalog.CatalogError is CatalogError
    assert issubclass(CatalogError, ValueError)
    assert issubclass(text_catalog.ModelEntry, CatalogEntry)


# -- the file ------------------------------------------------------------------------------------


def test_a_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(CatalogError, match=f"^{re.escape(str(path))}: cannot read the catalogue: No such file or directory$"):
        embeddings_catalog.load_catalog(path)


def test_bad_toml(tmp_path):
    path = write(tmp_path, "[[models]]\nid = \n")
    with pytest.raises(CatalogError, match=f"^{re.escape(str(path))}: not valid TOML: .*line 2"):
        embeddings_catalog.load_catalog(path)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "models = []\n"])
def test_no_entries(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(CatalogError, match=f"^{re.escape(str(path))}: no \\[\\[models\\]\\] entries$"):
        images_catalog.load_catalog(path)


def test_a_misspelt_table_name_is_named(tmp_path):
    path = write(tmp_path, '[[model]]\nid = "a"\n')
    with pytest.raises(CatalogError, match=r"unknown top-level key\(s\) 'model'; a catalogue holds only \[\[models\]\] tables"):
        images_catalog.load_catalog(path)


def test_models_that_are_not_tables(tmp_path):
    with pytest.raises(CatalogError, match=r": `models` must be an array of tables"):
        images_catalog.load_catalog(write(tmp_path, 'models = "a"\n'))
    with pytest.raises(CatalogError, match=r": models\[0\]: not a table$"):
        images_catalog.load_catalog(write(tmp_path, "models = [1]\n"))


# -- entries -------------------------------------------------------------------------------------


def test_a_bad_field_names_file_entry_id_field_and_reason(tmp_path, text_folder):
    text = TEXT_ENTRY.format(id="a") + TEXT_ENTRY.format(id="b").replace("8192", "0")
    path = write(text_folder, text)
    with pytest.raises(CatalogError) as err:
        text_catalog.load_catalog(path)
    assert str(err.value) == f'{path}: models[1] (id "b"): context_length=0: Input should be greater than 0'


def test_every_bad_field_of_the_entry_is_named(tmp_path):
    path = write(tmp_path, """
[[models]]
triton_model = ""
dimensions = "384"
max_input_tokens = -1
supports_dimensions = "no"
""")
    with pytest.raises(CatalogError) as err:
        embeddings_catalog.load_catalog(path)
    message = str(err.value)
    assert message.startswith(f"{path}: models[0]: ")  # no id to show
    assert "id: Field required" in message
    assert "triton_model='': String should have at least 1 character" in message
    assert "dimensions='384': Input should be a valid integer" in message  # TOML is typed: no "384" for 384
    assert "max_input_tokens=-1: Input should be greater than 0" in message
    assert "supports_dimensions='no': Input should be a valid boolean" in message
    assert "\n" not in message


def test_an_unknown_key(tmp_path):
    path = write(tmp_path, """
[[models]]
id = "m"
triton_model = "minilm"
dimensions = 384
max_input_tokens = 254
colour = "red"
""")
    with pytest.raises(CatalogError, match=r'models\[0\] \(id "m"\): colour=\'red\': Extra inputs are not permitted$'):
        embeddings_catalog.load_catalog(path)


def test_a_duplicate_id(text_folder):
    path = write(text_folder, TEXT_ENTRY.format(id="a") + TEXT_ENTRY.format(id="b") + TEXT_ENTRY.format(id="a"))
    with pytest.raises(CatalogError) as err:
        text_catalog.load_catalog(path)
    assert str(err.value) == f'{path}: models[2] (id "a"): duplicate id, already used by models[0]'


def test_a_missing_template(text_folder):
    path = write(text_folder, TEXT_ENTRY.format(id="a").replace('"chat.jinja"', '"templates/gone.jinja"'))
    with pytest.raises(CatalogError) as err:
        text_catalog.load_catalog(path)
    template = text_folder / "templates" / "gone.jinja"
    assert str(err.value) == (
        f"{path}: models[0] (id \"a\"): chat_template='templates/gone.jinja': "
        f"Value error, cannot read the template {template}: No such file or directory"
    )


def test_a_template_that_does_not_parse(text_folder):
    (text_folder / "tools.jinja").write_text("{% for m in messages %}")
    path = write(text_folder, TEXT_ENTRY.format(id="a") + 'tool_chat_template = "tools.jinja"\n')
    with pytest.raises(CatalogError, match=r"tool_chat_template='tools.jinja': Value error, the template .*tools.jinja does not parse: line 1"):
        text_catalog.load_catalog(path)


def test_templates_are_relative_to_the_catalogue_not_the_working_directory(text_folder, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    (text_folder / "tools.jinja").write_text("tools: {{ tools | length }}")
    path = write(text_folder, TEXT_ENTRY.format(id="a") + 'tool_chat_template = "tools.jinja"\n')
    entry = text_catalog.load_catalog(path)["a"]
    assert entry.tool_template.render([], tools=[{"type": "function"}]) == "tools: 1"


def test_image_sizes(tmp_path):
    base = '[[models]]\nid = "i"\ntriton_model = "tiny_sd"\n'
    (entry,) = images_catalog.load_catalog(write(tmp_path, base + 'sizes = ["256x512"]\n')).values()
    assert entry.sizes == ((256, 512),)
    for bad, reason in [
        ('["0x512"]', "Value error, size '0x512' is not WIDTHxHEIGHT in pixels"),
        ('["big"]', "Value error, size 'big' is not WIDTHxHEIGHT in pixels"),
        ("[]", "Tuple should have at least 1 item"),
    ]:
        with pytest.raises(CatalogError, match=re.escape(reason)):
            images_catalog.load_catalog(write(tmp_path, base + f"sizes = {bad}\n"))
    assert images_catalog.parse_size("1792x1024") == (1792, 1024)


def test_the_generic_loader_takes_any_entry_type(tmp_path):
    class Plain(CatalogEntry):
        weight: float = 1.0

    path = write(tmp_path, '[[models]]\nid = "p"\ntriton_model = "t"\nweight = 2.5\n')
    assert load_catalog(path, Plain)["p"].weight == 2.5
    with pytest.raises(CatalogError, match=r"weight=2.5: Extra inputs are not permitted$"):
        load_catalog(str(path), CatalogEntry)
    base = write(tmp_path, '[[models]]\nid = "p"\ntriton_model = "t"\n', "base.toml")
    assert load_catalog(str(base), CatalogEntry)["p"].owned_by == "hubmesh"
