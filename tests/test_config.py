from pathlib import Path

import pytest

from geoseg.config import RunConfig, config_from_mapping, load_config
from geoseg.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_default_config_matches_defaults():
    assert load_config(CONFIGS / "default.yaml") == RunConfig()


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  tile_size: 256\n  overlapp: 3\n")
    with pytest.raises(ConfigError, match=r"overlapp.*section 'tiling'"):
        load_config(path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"inference": {"batch_size": "eight"}}, "inference.batch_size: expected an integer"),
        ({"output": {"vectorize": "yes"}}, "output.vectorize: expected true or false"),
        ({"bands": 3}, "bands: expected a list"),
        ({"tiling": 5}, "tiling: expected a mapping"),
        ({"inference": {"device": "tpu"}}, "inference.device"),
        ({"tiling": {"tile_size": 100, "overlap": 60}}, "at most half"),
        ({"scale": "stretch"}, "scale must be auto, none, LO,HI .* pN,pM"),
        ({"scale": 3000}, "scale: expected a string"),
    ],
)
def test_wrong_types_and_values_are_named(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(data)


def test_replace_ignores_none_and_validates():
    cfg = RunConfig().replace(tiling={"overlap": 32, "tile_size": None}, top={"bands": [1, 2, 3]})
    assert cfg.tiling.overlap == 32 and cfg.tiling.tile_size is None and cfg.bands == (1, 2, 3)
    with pytest.raises(ConfigError):
        RunConfig().replace(inference={"batch_size": 0})


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_scale_is_kept_in_its_canonical_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scale: 0, 3000\n")
    cfg = load_config(path)
    assert cfg.scale == "0.0,3000.0" and cfg.scale_spec.windows(2) == ((0.0, 3000.0),) * 2
    assert RunConfig().scale == "auto"
    assert RunConfig().replace(top={"scale": "P2,P98"}).scale == "p2.0,p98.0"
