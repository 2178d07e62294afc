"""What a wheel ships and how the installed package finds itself: the version, the typed public
names, the packaged configs (looked up by name from any folder) and the command without the lab.

The wheel itself is built, installed in a fresh virtual environment and run by ``.ci/wheel_check.sh``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest

import optim_chain
from optim_chain.lab import cli, config

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "optim_chain"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_installed_distributions():
    assert optim_chain.__version__ == importlib.metadata.version("optim_chain")
    assert optim_chain.__version__ == PYPROJECT["project"]["version"]


def test_checkers_see_every_public_name_where_it_lives():
    """The ``if TYPE_CHECKING:`` imports of ``__init__`` are the names ``__getattr__`` serves."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(
        node for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    seen: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        for alias in node.names:
            # "name as name" marks a re-export for checkers of a py.typed package
            assert alias.asname == alias.name, alias.name
            module = "" if node.module == "optim_chain" else node.module.removeprefix("optim_chain.")
            seen[alias.name] = module
    expected = {name: module for module, names in optim_chain._MODULES.items() for name in names}
    expected.update({name: "" for name in optim_chain._SUBMODULES})
    assert seen == expected
    assert sorted(seen) == optim_chain.__all__


def _package_data(package: str) -> list[str]:
    return PYPROJECT["tool"]["setuptools"]["package-data"][package]


def test_the_wheel_declares_py_typed_and_every_packaged_config():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in _package_data("optim_chain")
    patterns = _package_data("optim_chain.lab")
    lab = PACKAGE / "lab"
    shipped = [p.relative_to(lab).as_posix() for p in (lab / "configs").rglob("*") if p.is_file()]
    shipped += [p.relative_to(lab).as_posix() for p in (lab / "results").rglob("*") if p.is_file()]
    assert "configs/digits_compare.yaml" in shipped and "configs/presets/adamw.yaml" in shipped
    # matched part by part, as setuptools globs them ("*" never crosses a "/")
    left_out = [f for f in shipped if not any(PurePosixPath(f).match(pattern) for pattern in patterns)]
    assert not left_out, f"packaged files no package-data pattern ships: {left_out}"


def test_the_source_trees_configs_folder_is_the_packaged_one():
    """One copy of each YAML file: ``configs/`` in the repository points into the package."""
    assert (ROOT / "configs").is_symlink()
    assert (ROOT / "configs").resolve() == config.CONFIG_DIR
    assert config.MAP_FILE.parent == config.CONFIG_DIR
    assert all(path.is_file() and path.parent == config.CONFIG_DIR for path in config.DEFAULT_FILES.values())


def test_a_config_path_that_does_not_exist_is_found_among_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.find_config("configs/digits_compare.yaml") == config.CONFIG_DIR / "digits_compare.yaml"
    assert config.find_config("digits_compare.yaml") == config.CONFIG_DIR / "digits_compare.yaml"
    assert config.find_config("configs/presets/adamw.yaml") == config.CONFIG_DIR / "presets" / "adamw.yaml"
    experiment = config.load_experiment("configs/digits_compare.yaml", "compare")
    assert experiment.source == "optim_chain/lab/configs/digits_compare.yaml"
    # an optimizer file named inside a packaged experiment is read beside it, in the package
    transformer = config.load_experiment("configs/compare_transformer.yaml", "compare")
    assert transformer.optimizers and transformer.model["name"] == "transformer"


def test_a_file_that_exists_is_read_before_a_packaged_one_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    mine = Path("configs") / "digits_compare.yaml"
    text = (config.CONFIG_DIR / "digits_compare.yaml").read_text()
    mine.write_text(text.replace("name: digits_compare", "name: mine"))
    assert config.find_config(mine) == mine
    experiment = config.load_experiment(mine, "compare")
    assert experiment.source == str(mine) and experiment.name == "mine"


def test_a_missing_config_error_is_one_line_listing_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError) as raised:
        config.find_config("configs/digits_compre.yaml")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("configs/digits_compre.yaml: does not exist")
    assert "digits_compare.yaml" in message and "presets/adamw.yaml" in message
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.find_config(tmp_path / "absolute" / "digits_compare.yaml")  # absolute: never looked up


def test_the_command_in_a_missing_configs_case_exits_with_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["show", "--config", "configs/nothing.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "packaged configs: " in err


def test_without_the_lab_extra_the_command_says_how_to_install_it_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "LAB_MODULES", ("yaml", "optim_chain_no_such_module"))
    assert cli.main(["--help"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "optim-chain needs the lab extra (missing: optim_chain_no_such_module): "
        'pip install "optim_chain[lab]"\n'
    )


def test_the_modules_checked_are_those_the_lab_extra_installs():
    assert cli.missing_lab_modules() == []
    requirements = PYPROJECT["project"]["optional-dependencies"]["lab"]
    extra = {re.split(r"[<>=!~ \[;]", requirement)[0].lower() for requirement in requirements}
    providers = importlib.metadata.packages_distributions()
    assert {providers[name][0].lower() for name in cli.LAB_MODULES} == extra


def test_a_deprecated_name_warns_naming_its_replacement_and_still_works(monkeypatch):
    monkeypatch.setitem(optim_chain._DEPRECATED, "adam_decoupled", ("adamw", "0.3.0"))
    message = "optim_chain.adam_decoupled is deprecated and will be removed in 0.3.0; use optim_chain.adamw"
    for _ in range(2):  # every use warns, not only the first
        with pytest.warns(DeprecationWarning, match=re.escape(message)):
            assert optim_chain.adam_decoupled is optim_chain.adamw
    assert "adam_decoupled" not in optim_chain.__all__


def test_no_public_name_is_deprecated_and_public_at_once():
    assert not set(optim_chain._DEPRECATED) & set(optim_chain.__all__)
    assert all(new in optim_chain.__all__ for new, _ in optim_chain._DEPRECATED.values())
