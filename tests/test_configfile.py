"""Config values: numbers read as numbers (YAML 1.2 floats), one-line errors naming the file or key."""

import pytest
import yaml

from ddc import configfile
from ddc.sweep import load_spec


@pytest.mark.parametrize(
    "text, value",
    [("3e-1", 0.3), ("1e4", 1e4), (".5", 0.5), ("1.5e3", 1500.0), ("-2E+2", -200.0), ("5e-4", 5e-4), ("1.", 1.0),
     ("12", 12), ("-3", -3), ("0x10", 16), ("true", True), ("null", None), ("zscore", "zscore"), ("1e", "1e"),
     ("[1e-2, 2]", [0.01, 2])],
)
def test_values_are_numbers_when_they_look_like_numbers(text, value):
    got = configfile.parse_value(text)
    assert got == value and type(got) is type(value)


def test_pyyaml_itself_is_left_alone():
    configfile.loads("a: 1e4")
    assert yaml.safe_load("1e4") == "1e4"  # YAML 1.1, for other users of PyYAML in this process


def test_pairs_and_their_errors():
    assert configfile.parse_pairs(["p_base=3e-1", " tau = .5"], "--opt") == {"p_base": 0.3, "tau": 0.5}
    with pytest.raises(configfile.ConfigFileError, match="--opt 'p_base' must look like KEY=VALUE"):
        configfile.parse_pairs(["p_base"], "--opt")
    with pytest.raises(configfile.ConfigFileError, match="--opt '=3' must look like KEY=VALUE"):
        configfile.parse_pairs(["=3"], "--opt")
    with pytest.raises(configfile.ConfigFileError, match="-p x=.*not a valid value"):
        configfile.parse_pairs(["x=[1,"], "-p")


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"  \n# only a comment\n", "holds nothing"), (b"- 1\n- 2\n", "holds list"),
     (b"3e-1\n", "holds float"), (b"a: [1,\n", "not valid YAML.*line"), (b"\xff\xfe\x00", "not a text file")],
)
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "conf.yaml"
    path.write_bytes(content)
    with pytest.raises(configfile.ConfigFileError, match=f"config file {path}.*{message}"):
        configfile.load_mapping(path)
    with pytest.raises(configfile.ConfigFileError, match=f"sweep spec {path}"):
        load_spec(path)
    with pytest.raises(configfile.ConfigFileError, match=f"cannot be read"):
        configfile.load_mapping(tmp_path)  # a directory


def test_sweep_spec_numbers(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("base: {dataset: synthetic, model: linreg2d, lr: 1e-2, weight_decay: 0}\n"
                    "methods:\n  ddc: {method: ddc, grid: {method_options.p_base: [2e-1, 3e-1]}}\n")
    configs = load_spec(path).expand()
    assert [c.lr for c in configs] == [0.01, 0.01] and [c.method_options["p_base"] for c in configs] == [0.2, 0.3]
