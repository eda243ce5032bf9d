"""The one architecture table: every loader's architectures are in it, and it names real classes."""
import pytest

pytest.importorskip("transformers")


def test_table_covers_every_loader_and_names_transformers_classes():
    import transformers

    from kiln.models import architectures, gguf, zoo
    assert set(gguf.SUPPORTED_ARCHS) <= set(architectures.ARCHITECTURES)
    assert set(zoo.FAMILIES) <= set(architectures.ARCHITECTURES)
    for arch in architectures.ARCHITECTURES:
        config_cls, model_cls = architectures.config_class(arch), architectures.causal_lm_class(arch)
        assert config_cls.model_type == arch  # the key is transformers' own name for it
        assert issubclass(model_cls, transformers.PreTrainedModel) and model_cls.config_class is config_cls


def test_zoo_builds_its_families_through_the_table():
    from kiln.models import zoo
    for family in zoo.FAMILIES:
        cfg = zoo.config(family, 1)
        assert cfg.model_type == family


def test_unknown_names_are_kiln_errors():
    from kiln.errors import KilnError
    from kiln.models import architectures, load_parts, zoo
    with pytest.raises(KilnError, match="unknown architecture 'mamba'"):
        architectures.causal_lm_class("mamba")
    with pytest.raises(KilnError, match="unknown model family 'mamba'"):
        zoo.config("mamba", 1)
    with pytest.raises(KilnError, match="unknown model 'no-such-model'"):
        load_parts("no-such-model", lambda _msg: None)
