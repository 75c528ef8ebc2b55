"""The offline switch follows what a backbone path is, not how it is spelled."""

from __future__ import annotations

import os

import pytest

from kfold_nlp.config.paths import offline_for_local


@pytest.mark.parametrize("spelling", ["weights", "MiniLM-copy", "my-model"])
def test_a_local_folder_of_any_name_turns_the_hub_off(spelling, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / spelling).mkdir()
    offline_for_local(str(tmp_path / spelling), None)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_a_hub_name_or_an_explicit_setting_is_left_alone(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline_for_local("sentence-transformers/all-minilm-l6-v2", None)
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    offline_for_local(os.getcwd())
    assert os.environ["HF_HUB_OFFLINE"] == "0"
