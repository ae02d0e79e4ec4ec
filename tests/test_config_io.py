"""Tests for jmeta.config_io: YAML + overrides, schema validation with named errors."""

import importlib.util

import pytest

from jmeta import cli, runs
from jmeta.config_io import (ConfigError, KwargsOf, ListOf, MapOf, OneOf, Optional, Range,
                             Required, apply_overrides, load_config, parse_override,
                             parse_value, validate)
from jmeta.data import csbm
from jmeta.metamers import MetamerConfig
from jmeta.models import ModelConfig
from jmeta.train import AdversarialConfig, TrainConfig

SCHEMA = {
    "models": ListOf(OneOf("gcn", "gat"), min_len=1, unique=True),
    "steps": Range(1, None, integer=True),
    "lr": float,
    "flag": bool,
    "name": Required(str),
    "out": Optional(str),
    "metamer": MetamerConfig,
    "train": TrainConfig,
    "model": ModelConfig,
    "per_model": MapOf(OneOf("gcn", "gat"), ModelConfig),
    "synthetic": KwargsOf(csbm),
}


def _write(tmp_path, text, name="c.yaml"):
  p = tmp_path / name
  p.write_text(text)
  return str(p)


def test_parse_value_yaml_types():
  assert parse_value("10") == 10 and isinstance(parse_value("10"), int)
  assert parse_value("1e-3") == pytest.approx(1e-3)  # PyYAML alone reads this as a string
  assert parse_value("5E+2") == 500.0
  assert parse_value("0.5") == 0.5
  assert parse_value("[gcn, gat]") == ["gcn", "gat"]
  assert parse_value("null") is None
  assert parse_value("true") is True
  assert parse_value("gcn") == "gcn"
  assert parse_override("metamer.steps=20") == (["metamer", "steps"], 20)
  assert parse_override("a=b=c") == (["a"], "b=c")
  with pytest.raises(ConfigError, match="key=value"):
    parse_override("metamer.steps")
  with pytest.raises(ConfigError, match="empty key"):
    parse_override("a..b=1")


def test_apply_overrides_is_a_copy_and_creates_sections():
  base = {"a": {"b": 1}, "c": 2}
  out = apply_overrides(base, ["a.b=3", "d.e=4"])
  assert out == {"a": {"b": 3}, "c": 2, "d": {"e": 4}}
  assert base == {"a": {"b": 1}, "c": 2}
  with pytest.raises(ConfigError, match="'c' is int, not a mapping"):
    apply_overrides(base, ["c.x=1"])


def test_load_config_with_schema_and_overrides(tmp_path):
  path = _write(tmp_path, "name: t\nmodels: [gcn]\nsteps: 5\nlr: 1e-3\nmetamer: {steps: 7}\n"
                          "train: {adversarial: {eps: 0.2}}\n")
  cfg = load_config(path, ["steps=9", "metamer.num_seeds=3", "models=[gcn, gat]",
                           "train.adversarial.steps=2", "out=null"], schema=SCHEMA)
  assert cfg["steps"] == 9 and cfg["lr"] == pytest.approx(1e-3)
  assert cfg["metamer"] == {"steps": 7, "num_seeds": 3}
  assert cfg["models"] == ["gcn", "gat"]
  assert cfg["train"]["adversarial"] == {"eps": 0.2, "steps": 2}
  assert cfg["out"] is None


@pytest.mark.parametrize("text,overrides,match", [
    ("name: t\nstepz: 3\n", [], r"unknown key\(s\) \['stepz'\]"),
    ("name: t\n", ["stepz=3"], "unknown key 'stepz'"),
    ("name: t\n", ["metamer.stepz=3"], "unknown key 'metamer.stepz'"),
    ("name: t\nmetamer: {stepz: 3}\n", [], r"metamer\.stepz"),
    ("name: t\n", ["metamer.steps=0"], r"metamer: MetamerConfig\.steps=0"),
    ("name: t\n", ["metamer.margin_sign=up"], "margin_sign"),
    ("name: t\n", ["model.hidden=0"], r"model: ModelConfig\.hidden must be >= 1"),
    ("name: t\n", ["model.name=mlp"], "ModelConfig.name must be one of"),
    ("name: t\n", ["train.learning_rate=-1"], "TrainConfig.learning_rate"),
    ("name: t\n", ["train.adversarial.eps=0"], r"train\.adversarial: AdversarialConfig\.eps"),
    ("name: t\n", ["train.adversarial.epz=1"], "unknown key 'train.adversarial.epz'"),
    ("name: t\n", ["models=[gcn, sage]"], r"models\[1\]: 'sage' is not one of"),
    ("name: t\n", ["models=[gcn, gcn]"], "models: repeated item"),
    ("name: t\n", ["models=[]"], "models: needs at least 1"),
    ("name: t\n", ["steps=0"], r"steps: 0 is outside \[1, None\]"),
    ("name: t\n", ["steps=2.5"], "steps: expected int"),
    ("name: t\n", ["steps=true"], "steps: expected int"),
    ("name: t\n", ["flag=1"], "flag: expected bool"),
    ("name: t\n", ["lr=abc"], "lr: expected float"),
    ("name: t\n", ["lr=.nan"], "lr: must be a finite number"),
    ("name: t\n", ["per_model.sage.hidden=3"], "per_model key: 'sage' is not one of"),
    ("name: t\n", ["per_model.gat.dropout=1.5"], r"per_model\.gat: ModelConfig\.dropout"),
    ("name: t\n", ["synthetic.num_nodez=3"], r"synthetic\.num_nodez"),
    ("name: t\n", ["synthetic.num_nodes=abc"], r"synthetic\.num_nodes: expected int"),
    ("steps: 3\n", [], "missing required key 'name'"),
    ("name: [1\n", [], "invalid YAML"),
    ("- a\n- b\n", [], "top level must be a mapping"),
])
def test_errors_name_the_key(tmp_path, text, overrides, match):
  path = _write(tmp_path, text)
  with pytest.raises(ConfigError, match=match):
    load_config(path, overrides, schema=SCHEMA)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.yaml"):
    load_config(str(tmp_path / "nope.yaml"))


def test_empty_file_is_empty_config(tmp_path):
  assert load_config(_write(tmp_path, "")) == {}


def test_without_schema_known_sections_are_validated(tmp_path):
  path = _write(tmp_path, "models: [gcn]\nmetamer: {steps: 3}\n")
  cfg = load_config(path, ["models=[gat]", "metamer.layer=2", "train.epochs=5",
                           "model_overrides.gat.hidden=8"])
  assert cfg == {"models": ["gat"], "metamer": {"steps": 3, "layer": 2},
                 "train": {"epochs": 5}, "model_overrides": {"gat": {"hidden": 8}}}
  with pytest.raises(ConfigError, match="unknown key 'datasetz'"):
    load_config(path, ["datasetz=[cora]"])
  with pytest.raises(ConfigError, match="unknown key 'metamer.stepz'"):
    load_config(path, ["metamer.stepz=3"])
  with pytest.raises(ConfigError, match="MetamerConfig.steps"):
    load_config(path, ["metamer.steps=-1"])


def test_validate_constructs_dataclasses_like_the_library():
  # The schema accepts exactly what the dataclass accepts: compare with direct construction.
  for kw in ({"steps": 1}, {"steps": 0}, {"learning_rate": 0.0}, {"density": "learned"},
             {"layer": 2, "tol": 1e-4}):
    try:
      MetamerConfig(**kw)
      ok = True
    except ValueError:
      ok = False
    if ok:
      validate(kw, MetamerConfig, "m")
    else:
      with pytest.raises(ConfigError):
        validate(kw, MetamerConfig, "m")
  validate({"adversarial": {"eps": 0.1}}, TrainConfig, "t")
  assert AdversarialConfig(eps=0.1).eps == 0.1


def _experiment_schema(name):
  path = runs.experiments_dir() / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"_t_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.SCHEMA


@pytest.mark.parametrize("name", ["table1", "fig5_structure", "jacobian_study"])
def test_shipped_experiment_configs_validate(name):
  schema = _experiment_schema(name)
  for suffix in ("", "_quick"):
    cfg = load_config(runs.configs_dir() / f"{name}{suffix}.yaml", schema=schema)
    assert cfg, name + suffix


def test_shipped_command_configs_validate():
  schemas = cli._schemas()
  for name in ("train", "metamer", "rank"):
    cfg = load_config(runs.configs_dir() / f"{name}.yaml", schema=schemas[name])
    assert cfg["model"]["name"] in ("gcn", "cheb", "sage", "gin", "gat", "graphormer")
  full = load_config(runs.configs_dir() / "table1.yaml",
                     schema=_experiment_schema("table1"))
  assert full["metamer"]["steps"] == 2000 and full["metamer"]["num_seeds"] == 5
  assert full["metamer"]["learning_rate"] == pytest.approx(5e-4)  # paper Sec 4.1
  assert len(full["models"]) == 6 and len(full["datasets"]) == 5


def test_without_schema_nested_dataclass_fields(tmp_path):
  path = _write(tmp_path, "train: {}\n")
  cfg = load_config(path, ["train.adversarial.eps=0.3"])
  assert cfg["train"] == {"adversarial": {"eps": 0.3}}
  with pytest.raises(ConfigError, match="unknown key 'train.adversarial.epz'"):
    load_config(path, ["train.adversarial.epz=0.3"])
