import pytest

from ctpipe.pipeline.config import ConfigError, PipelineConfig


def test_defaults_derive_paths_from_home():
    from ctpipe.pipeline.home import Home

    home = Home.of(PipelineConfig(home="/h"))
    assert home.metadata_path == "/h/metadata.sqlite"
    assert home.model_dir == "/h/serving/big_tipper"
    assert home.manifest_path == "/h/serving/models.config"
    assert home.log_path(3) == "/h/logs/span-3.log"


def test_toml_then_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('window_spans = 5\nmin_auc = 0.8\nhome = "/from-toml"\n')
    config = PipelineConfig.from_sources(str(toml), {"home": "/from-flag", "span": None})
    assert (config.window_spans, config.min_auc, config.home) == (5, 0.8, "/from-flag")


@pytest.mark.parametrize("text, message", [
    ("windowspans = 5", "unknown config key"),
    ('window_spans = "five"', "must be int"),
    ("min_auc = 1.5", "min_auc must be within"),
    ("window_spans = 0", "must be positive"),
    ("window_spans = ", "not valid TOML"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_sources(str(toml))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        PipelineConfig.from_sources("/nonexistent/c.toml")
