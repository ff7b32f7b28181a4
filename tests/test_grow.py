"""Growing depth (zoo.grow): the grown network computes what the source did, and trains on."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

import zoo
from zoo.data.midi import ChoraleTokenizer
from zoo.data.pixels import PixelDataModule
from zoo.grow import copies_per_layer, grow, grow_state, layer_stack, main, max_difference
from zoo.tasks.image import ImageTask


def saved_chorale_model(folder):
    tok = ChoraleTokenizer()
    torch.manual_seed(0)
    model = zoo.create("music_transformer_tiny", vocab_size=tok.vocab_size, pad_id=0, bos_id=1, eos_id=2)
    model.tokenizers = (tok, tok)
    for p in model.net.parameters():  # trained-looking weights: no zero biases that would hide a mistake
        p.data.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def saved_image_model(folder, pixel_task):
    dm = PixelDataModule(source="digits", levels=17, task=pixel_task, batch_size=8, train_limit=32)
    shape = dict(src_height=4, src_width=4) if pixel_task == "super_resolution" else {}
    torch.manual_seed(0)
    model = zoo.create("image_transformer_tiny", pixel_task=pixel_task, num_classes=10, **shape)
    model.tokenizers = dm.tokenizers
    for p in model.net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model, dm


def test_grown_music_transformer_computes_the_same_and_names_its_copies(tmp_path):
    source = saved_chorale_model(tmp_path / "m")
    small, big = grow(str(tmp_path / "m"), 6)
    assert big.net.config.layers == 6 and big.hparams.arch_args["layers"] == 6
    assert max_difference(small.net, big.net) < 1e-5
    tokens = torch.randint(3, 132, (2, 40))
    torch.testing.assert_close(big.net(tokens), source.net(tokens), atol=1e-5, rtol=0)
    state = big.net.state_dict()
    # layer 1 of the source is layers 3, 4, 5; only the copies' branch outputs are zero
    assert torch.equal(state["layers.3.attn.rel_emb"], source.net.state_dict()["layers.1.attn.rel_emb"])
    assert torch.equal(state["layers.4.attn.attn.q_proj.weight"], state["layers.3.attn.attn.q_proj.weight"])
    assert state["layers.3.ffn.3.weight"].abs().sum() > 0
    for k in ("layers.4.ffn.3.weight", "layers.5.ffn.3.bias", "layers.4.attn.attn.out_proj.weight"):
        assert state[k].abs().sum() == 0, k


def test_depth_that_is_not_a_multiple_spreads_the_copies_evenly(tmp_path):
    assert copies_per_layer(8, 12) == [1, 2] * 4 and copies_per_layer(8, 16) == [2] * 8
    assert copies_per_layer(4, 5) == [1, 1, 1, 2] and sum(copies_per_layer(3, 11)) == 11
    source = saved_chorale_model(tmp_path / "m")
    small, big = grow(str(tmp_path / "m"), 3)  # 2 -> 3: layer 1 of the source is layers 1, 2
    assert max_difference(small.net, big.net) < 1e-5
    state, old = big.net.state_dict(), source.net.state_dict()
    assert torch.equal(state["layers.1.attn.rel_emb"], old["layers.1.attn.rel_emb"])
    assert torch.equal(state["layers.2.attn.rel_emb"], old["layers.1.attn.rel_emb"])
    assert torch.equal(state["layers.1.ffn.3.weight"], old["layers.1.ffn.3.weight"])
    assert state["layers.2.ffn.3.weight"].abs().sum() == 0


@pytest.mark.parametrize("pixel_task", ["class_conditional", "super_resolution"])
def test_grown_image_transformer_computes_the_same_and_trains(tmp_path, pixel_task):
    saved_image_model(tmp_path / "i", pixel_task)
    small, big = grow(str(tmp_path / "i"), 4)
    assert layer_stack(big.net) == "decoder" and len(big.net.decoder) == 4
    if pixel_task == "super_resolution":  # the encoder keeps its depth
        assert len(big.net.encoder) == len(small.net.encoder) == 1
    assert max_difference(small.net, big.net) < 1e-5
    # the zeroed maps get gradients at once, so the copies learn from the first step
    big.save_pretrained(tmp_path / "big")
    model = zoo.load(str(tmp_path / "big"))
    model.train()
    dm = saved_image_model(tmp_path / "again", pixel_task)[1]
    before = model.net.decoder[1].ffn[3].weight.detach().clone()
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(model, dm)
    assert not torch.equal(model.net.decoder[1].ffn[3].weight, before)


def test_bad_growth_is_one_clear_line(tmp_path, capsys):
    saved_chorale_model(tmp_path / "m")
    state = zoo.load(str(tmp_path / "m")).net.state_dict()
    with pytest.raises(ValueError, match="larger than the source's 2 layers, got 1"):
        grow_state(state, "layers", 2, 1)
    with pytest.raises(SystemExit, match="zoo grow: --layers must be larger than the source's 2 layers, got 2"):
        main([str(tmp_path / "m"), "--layers", "2", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="zoo grow: .*no_such_folder"):
        main([str(tmp_path / "no_such_folder"), "--layers", "4", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    main([str(tmp_path / "m"), "--layers", "4", "--out", str(tmp_path / "out")])
    assert "2 -> 4 layers" in capsys.readouterr().out
    assert zoo.load(str(tmp_path / "out")).net.config.layers == 4


def test_a_setting_with_a_zero_table_grows_and_one_that_changes_shapes_is_refused(tmp_path):
    saved_chorale_model(tmp_path / "m")
    small, big = grow(str(tmp_path / "m"), changes={"relative_pitch": 12})
    assert big.net.config.relative_pitch == 12 and big.net.layers[0].attn.pitch_emb.abs().sum() == 0
    assert max_difference(small.net, big.net) < 1e-5
    with pytest.raises(ValueError, match="changes shape .* only settings that add parameters can be grown"):
        grow(str(tmp_path / "m"), changes={"d_ff": 256})
    with pytest.raises(SystemExit, match="zoo grow: nothing to grow"):
        main([str(tmp_path / "m"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="zoo grow: --set takes NAME=VALUE, got 'relative_pitch'"):
        main([str(tmp_path / "m"), "--set", "relative_pitch", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="zoo grow: the grown network differs from the source by .*; nothing written"):
        main([str(tmp_path / "m"), "--set", "block_len=8", "--out", str(tmp_path / "out")])  # local attention: another function
    assert not (tmp_path / "out").exists()


def test_the_readme_grows_each_published_folder_to_more_layers_than_it_has():
    """The README's example must keep working as the published weights get deeper."""
    repo = Path(__file__).resolve().parents[1]
    examples = re.findall(r"zoo grow (\S+) --layers (\d+)", (repo / "README.md").read_text())
    assert examples, "the README no longer shows zoo grow --layers"
    for folder, layers in examples:
        have = zoo.load(str(repo / folder)).net.config.layers
        assert int(layers) > have, f"the README grows {folder} to {layers} layers, but it has {have} already"


def test_a_run_started_from_a_folder_loads_after_the_folder_is_gone(tmp_path):
    """A Lightning checkpoint holds the architecture it was built with: publishing deeper weights
    to the folder a run started from (or deleting it) must not break loading that run."""
    start, dm = saved_image_model(tmp_path / "start", "class_conditional")
    hparams = {k: v for k, v in start.hparams.items() if k not in ("arch", "arch_args", "init_from")}
    model = ImageTask(**hparams, arch_args={"dropout": 0.0}, init_from=str(tmp_path / "start"))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    shutil.rmtree(tmp_path / "start")
    loaded = ImageTask.load_from_checkpoint(tmp_path / "run.ckpt", map_location="cpu")
    assert loaded.hparams.init_from is None and loaded.hparams.arch_args["dropout"] == 0.0
    assert torch.load(tmp_path / "run.ckpt", weights_only=True)["zoo_init_from"] == str(tmp_path / "start")
    for k, v in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v), k
    assert loaded.tokenizers is not None
