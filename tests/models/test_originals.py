"""import_original: a registry of importers of the original authors' checkpoints."""

from __future__ import annotations

import pytest
from torch import nn

from m3sgg.errors import ConfigError
from m3sgg.models import import_original, original_importers, originals, register_original


def test_registered_importer_receives_source_and_options(monkeypatch):
    monkeypatch.setattr(originals, "_IMPORTERS", {})
    seen = []

    def importer(source, **options):
        seen.append((source, options))
        return nn.Linear(options["width"], 1)

    register_original("toy", importer)
    model = import_original("toy", "ckpt.tar", width=3)
    assert isinstance(model, nn.Linear) and model.in_features == 3
    assert seen == [("ckpt.tar", {"width": 3})]
    assert original_importers() == ["toy"]
    with pytest.raises(ConfigError, match="already registered"):
        register_original("toy", importer)
    register_original("toy", lambda source, **o: nn.Identity(), override=True)
    assert isinstance(import_original("toy", None), nn.Identity)


def test_unknown_name_lists_the_known(monkeypatch):
    monkeypatch.setattr(originals, "_IMPORTERS", {"a": lambda s: nn.Identity()})
    with pytest.raises(ConfigError, match="no importer of original checkpoints for 'b'; known: a"):
        import_original("b", "x")
