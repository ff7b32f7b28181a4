import dataclasses
import inspect
import json

import pytest
import torch

import zoo
from zoo import registry
from zoo.registry import Pretrained, register_model, register_pretrained


def test_list_models_names_and_pattern():
    names = zoo.list_models()
    assert {"transformer_tiny", "transformer_small", "transformer_base"} <= set(names)
    assert names == sorted(names)
    assert zoo.list_models("transformer_s*") == ["transformer_small"]
    assert zoo.list_models("nothing*") == []


def test_pretrained_names_are_arch_dot_tag():
    for name in zoo.list_models(pretrained=True):
        entry = zoo.get_pretrained(name)
        assert entry.arch in registry.ARCHITECTURES, name
        assert entry.hub_id and entry.recipe and entry.data and entry.license
        assert entry.params >= 0 and entry.metrics  # count-based models have no parameters


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="registered twice"):

        @register_model(task="translation", config=object)
        def transformer_tiny():  # noqa: F811  same name as the real one
            pass

    entry = next(iter(registry.PRETRAINED.values()), None)
    if entry is not None:
        with pytest.raises(ValueError, match="registered twice"):
            register_pretrained(dataclasses.replace(entry))
    with pytest.raises(ValueError, match="arch.tag"):
        register_pretrained(Pretrained(name="notag", hub_id="x/y"))


def test_unknown_name_lists_closest():
    with pytest.raises(KeyError, match="transformer_small"):
        zoo.create("transformer_smal")
    with pytest.raises(KeyError, match="did you mean"):
        zoo.get_architecture("transfomer_base")
    with pytest.raises(KeyError, match="zoo list"):
        zoo.get_architecture("qqqqqqqq")


def test_unknown_argument_is_named():
    with pytest.raises(TypeError, match="d_modle"):
        zoo.create("transformer_tiny", d_modle=3)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_model_tiny(name):
    """Every architecture at a tiny size: forward, backward (or counting), finite outputs."""
    arch = zoo.get_architecture(name)
    torch.manual_seed(0)
    tiny = dict(src_vocab_size=40, tgt_vocab_size=40, vocab_size=40, d_model=32, n_heads=2, d_ff=64,
                encoder_layers=1, decoder_layers=1, max_len=32, emb_dim=16, hidden_dim=16, attn_dim=8, layers=1)
    fields = {f.name for f in dataclasses.fields(arch.config)}
    if arch.task == "image":  # 16 levels + start + padding tokens, 4x4 images, blocks that tile them
        tiny.update(vocab_size=18, levels=16, bos_id=16, pad_id=17, height=4, width=4, query_height=2, query_width=2,
                    mem_above=1, mem_side=1, block_len=4)
    net = arch.builder(**{k: v for k, v in tiny.items() if k in fields})
    tokens = torch.randint(4, 40, (2, 7))
    tokens[:, 0] = 2
    if arch.task == "translation":
        logits = net(tokens, torch.randint(4, 40, (2, 5)))
        assert logits.shape == (2, 5, 40)
    elif arch.task == "image":
        tokens = torch.randint(0, 16, (2, 16))
        tokens[:, 0] = 16
        logits = net(tokens)
        assert logits.shape == (2, 16, 16)  # a softmax over the 16 intensities
    elif arch.task == "qa":  # a story of 3 sentences of 5 words and a question: scores of the answer word
        logits, attention = net(torch.randint(4, 40, (2, 3, 5)), torch.randint(4, 40, (2, 4)))
        assert logits.shape == (2, 40) and attention.shape[0] == 2 and attention.shape[-1] == 3
        logits = logits[:, 1:]  # the padding word is never an answer: its score is -inf
    elif net.counts_only:
        net.observe(tokens, torch.roll(tokens, -1, 1))
        logits = net(tokens)
        torch.testing.assert_close(logits.exp().sum(-1), torch.ones(2, 7))
        return
    else:
        out = net(tokens)
        logits = out[0] if isinstance(out, tuple) else out  # recurrent models also return their state
        assert logits.shape == (2, 7, 40)
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


OPTIMISER_SETTINGS = {"lr", "warmup_steps", "betas", "eps", "weight_decay", "lr_schedule", "min_lr_ratio", "optimizer",
                      "momentum", "lr_plateau_factor", "lr_step_epochs", "lr_step_factor", "lr_step_start"}


@pytest.mark.parametrize("arch", ["transformer_tiny", "rnn_lm", "image_transformer_tiny"])
def test_every_task_takes_and_records_the_same_optimiser_settings(arch):
    from zoo.hub import model_config
    from zoo.tasks.base import ZooModule

    declared = {n for n, p in inspect.signature(ZooModule.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert declared == OPTIMISER_SETTINGS
    model = zoo.create(arch, lr=5e-4, optimizer="nag")
    assert OPTIMISER_SETTINGS <= set(type(model).init_arguments())
    assert OPTIMISER_SETTINGS <= set(model.hparams)  # those left at their defaults too
    assert (model.hparams.lr, model.hparams.optimizer, model.hparams.momentum) == (5e-4, "nag", 0.99)
    assert OPTIMISER_SETTINGS <= set(model_config(model)["hparams"])
    with pytest.raises(TypeError, match="lr must be a number"):
        zoo.create(arch, lr="fast")


def test_a_config_from_before_a_setting_existed_loads_with_its_default(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for name in ("lr_schedule", "min_lr_ratio", "optimizer", "momentum", "lr_plateau_factor"):
        config["hparams"].pop(name)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = zoo.load(str(tmp_path), lr=1e-4, dropout=0.0)
    assert (model.hparams.lr, model.hparams.lr_schedule, model.hparams.optimizer) == (1e-4, "inverse_sqrt", "adamw")
    assert model.hparams.arch_args["dropout"] == 0.0
