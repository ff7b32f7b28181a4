"""Image Transformer: local attention against masked full attention, causality, cached
generation, training of the three tasks through Lightning, sampling, save/load, bad input."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

import zoo
from zoo.data.pixels import PixelDataModule
from zoo.nn.local import Local1DPattern, Local2DPattern, LocalSelfAttention

from reference_attention import masked_attention

torch.set_num_threads(1)


# -- local attention ------------------------------------------------------------------
PATTERNS = {
    "1d": lambda: Local1DPattern(64, block_len=8, memory_blocks=1),
    "1d-two-blocks-back": lambda: Local1DPattern(48, block_len=8, memory_blocks=2),
    "1d-ragged": lambda: Local1DPattern(61, block_len=8, memory_blocks=1),  # last block padded
    "2d": lambda: Local2DPattern(8, 8, 1, query_height=2, query_width=4, mem_above=2, mem_side=2),
    "2d-rgb": lambda: Local2DPattern(4, 6, 3, query_height=2, query_width=3, mem_above=1, mem_side=1),
    "2d-no-flange": lambda: Local2DPattern(8, 8, 1, query_height=4, query_width=2, mem_above=0, mem_side=0),
}


@pytest.mark.parametrize("kind", PATTERNS)
def test_local_attention_equals_masked_full_attention(kind):
    """The blocked computation is full attention under the pattern's (T, T) mask: outputs and gradients."""
    torch.manual_seed(0)
    pattern = PATTERNS[kind]()
    t = pattern.seq_len
    q, k, v = (torch.randn(2, 3, t, 8, requires_grad=True) for _ in range(3))
    local = pattern.blocked(q, k, v)
    full = masked_attention(q, k, v, pattern.full_mask())
    torch.testing.assert_close(local, full, atol=1e-5, rtol=0)
    grad = torch.randn_like(local)
    for a, b in zip(torch.autograd.grad(local, (q, k, v), grad), torch.autograd.grad(full, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["1d", "2d-rgb"])
def test_the_written_out_bf16_path_agrees_with_fp32(kind):
    """bf16 on the CPU skips SDPA (it is slower there): same attention, up to bf16 rounding."""
    torch.manual_seed(0)
    pattern = PATTERNS[kind]()
    q, k, v = (torch.randn(2, 3, pattern.seq_len, 8) for _ in range(3))
    exact = masked_attention(q, k, v, pattern.full_mask())
    half = pattern.blocked(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert half.dtype == torch.bfloat16 and (half.float() - exact).abs().max() < 0.05


@pytest.mark.parametrize("kind", PATTERNS)
def test_mask_is_causal_local_and_matches_the_decoding_tables(kind):
    pattern = PATTERNS[kind]()
    mask = pattern.full_mask()
    t = pattern.seq_len
    assert not mask.triu(1).any() and mask.diagonal().all()  # raster-causal, each query sees itself
    assert mask.sum(1).max() <= pattern.block_shape[1] < t  # local: at most one memory's worth of keys
    from_tables = torch.zeros(t, t, dtype=torch.bool)
    for p in range(t):
        from_tables[p, pattern.pos_keys[p][pattern.pos_mask[p]]] = True
    assert torch.equal(from_tables, mask)


def test_2d_memory_is_the_flange_around_the_query_block():
    pattern = Local2DPattern(8, 8, 1, query_height=2, query_width=4, mem_above=2, mem_side=1)
    mask = pattern.full_mask()
    p = 5 * 8 + 4  # row 5, column 4: block rows 4-5, columns 4-7
    seen = {(int(j) // 8, int(j) % 8) for j in mask[p].nonzero()}
    expected = {(r, c) for r in range(2, 6) for c in range(3, 8) if r * 8 + c <= p}  # rows 2..5, cols 3..8 in the image
    assert seen == expected


def test_local_cost_is_linear_in_positions():
    """Fixed blocks: the keys per query stay the same as the image grows, so scores grow as T."""
    sizes = [Local2DPattern(s, s, 1, 4, 8, 4, 4) for s in (16, 32, 64)]
    assert len({p.block_shape for p in sizes}) == 1
    scores = [p.q_index.numel() * p.block_shape[1] for p in sizes]
    assert scores[1] == 4 * scores[0] and scores[2] == 16 * scores[0]


def test_blocks_that_do_not_tile_are_refused():
    with pytest.raises(ValueError, match=r"query blocks of 3x4 pixels do not tile the 8x8 image; pick query_height among 1, 2, 4, 8"):
        Local2DPattern(8, 8, 1, query_height=3, query_width=4)
    with pytest.raises(ValueError, match="do not tile"):
        zoo.create("image_transformer_tiny", query_width=3)


@pytest.mark.parametrize("kind", ["1d", "2d-rgb"])
def test_cached_steps_equal_the_full_forward(kind):
    torch.manual_seed(0)
    pattern = PATTERNS[kind]()
    attn = LocalSelfAttention(16, 4, pattern).eval()
    x = torch.randn(2, pattern.seq_len, 16)
    cache = attn.new_cache(2)
    steps = torch.cat([attn(x[:, i : i + 1], cache) for i in range(pattern.seq_len)], dim=1)
    assert (steps - attn(x)).abs().max() <= 1e-4


# -- the network ----------------------------------------------------------------------
def tiny(attention: str = "local_2d", pixel_task: str = "unconditional", **kw):
    torch.manual_seed(0)
    shape = dict(src_height=4, src_width=4) if pixel_task == "super_resolution" else {}
    model = zoo.create("image_transformer_tiny", attention=attention, pixel_task=pixel_task, num_classes=10, **shape, **kw)
    return model.eval()


def inputs(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.net.config
    targets = torch.randint(0, c.levels, (b, model.net.seq_len), generator=g)
    tokens = torch.cat([torch.full((b, 1), c.bos_id), targets[:, :-1]], dim=1)
    labels = torch.randint(0, 10, (b,), generator=g) if c.num_classes else None
    src = torch.randint(0, c.levels, (b, c.src_height * c.src_width), generator=g) if c.src_height else None
    return tokens, targets, labels, src


CASES = [("local_1d", "unconditional"), ("local_2d", "class_conditional"), ("full", "unconditional"),
         ("local_2d", "super_resolution"), ("local_2d", "dmol")]


def case(attention: str, pixel_task: str, **kw):
    """``pixel_task="dmol"``: the unconditional model with the mixture-of-logistics output."""
    if pixel_task == "dmol":
        return tiny(attention, "unconditional", output="dmol", mixtures=3, **kw)
    return tiny(attention, pixel_task, **kw)


@pytest.mark.parametrize("attention,pixel_task", CASES)
def test_changing_a_later_pixel_never_changes_an_earlier_output(attention, pixel_task):
    model = case(attention, pixel_task)
    tokens, _, labels, src = inputs(model)
    with torch.no_grad():
        before = model(tokens, labels, src)
        for j in (1, 20, 63):
            changed = tokens.clone()
            changed[:, j] = (changed[:, j] + 5) % model.net.config.levels
            after = model(changed, labels, src)
            assert torch.equal(after[:, :j], before[:, :j])
            assert not torch.allclose(after[:, j], before[:, j])  # and the pixel is read where it should be


@pytest.mark.parametrize("attention,pixel_task", CASES)
def test_cached_generation_equals_the_full_forward(attention, pixel_task):
    model = case(attention, pixel_task, positions="sinusoidal" if attention == "local_1d" else "learned")
    tokens, _, labels, src = inputs(model)
    with torch.no_grad():
        full = model(tokens, labels, src)
        state = model.net.init_state(2, labels, src)
        steps = torch.stack([model.net.step(tokens[:, t : t + 1], state) for t in range(tokens.size(1))], dim=1)
    assert (steps - full).abs().max() <= 1e-4


def test_score_is_the_log_softmax_over_intensities():
    model = tiny()
    tokens, targets, _, _ = inputs(model)
    logp = model.score(tokens, targets)
    assert logp.shape == targets.shape and (logp <= 0).all()
    assert model(tokens).shape == (2, 64, 17)  # a softmax over the 17 levels, not the 19 tokens


def test_dmol_output_is_a_distribution_over_the_levels_scored_at_the_targets():
    model = tiny(output="dmol", mixtures=3)
    assert model.net.out_proj.out_features == 9  # (weight, mean, log scale) per component
    tokens, targets, _, _ = inputs(model)
    with torch.no_grad():
        logp = model(tokens)
    assert logp.shape == (2, 64, 17) and (logp.exp().sum(-1) - 1).abs().max() < 1e-5
    torch.testing.assert_close(model.score(tokens, targets), logp.gather(-1, targets[..., None]).squeeze(-1))
    with pytest.raises(ValueError, match="unknown output 'logistic'; choose one of softmax, dmol"):
        tiny(output="logistic")
    with pytest.raises(ValueError, match="mixtures"):
        tiny(output="dmol", mixtures=0)


# -- training through Lightning -------------------------------------------------------
def digits(task: str) -> PixelDataModule:
    return PixelDataModule(source="digits", task=task, batch_size=16, eval_batch_size=32,
                           train_limit=64, val_limit=32, test_limit=32)


def linked(dm: PixelDataModule) -> dict:
    names = ("vocab_size", "pad_id", "bos_id", "levels", "height", "width", "channels", "num_classes",
             "src_height", "src_width", "pixel_task")
    return {n: getattr(dm, n) for n in names}


@pytest.mark.parametrize("task,attention,output", [("unconditional", "local_1d", "softmax"),
                                                   ("class_conditional", "local_2d", "softmax"),
                                                   ("super_resolution", "local_2d", "softmax"),
                                                   ("unconditional", "local_2d", "dmol")])
def test_each_task_trains_a_few_steps(task, attention, output, tmp_path):
    torch.manual_seed(0)
    dm = digits(task)
    model = zoo.create("image_transformer_tiny", attention=attention, output=output, lr=3e-3, val_samples=0,
                       **linked(dm))
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                        default_root_dir=tmp_path)
    before = model.bits_per_dim(dm, split="val")
    trainer.fit(model, dm)
    after = trainer.callback_metrics["val/bpd"].item()
    assert math.isfinite(after) and after < before
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(after * math.log(2), rel=1e-5)
    assert model.tokenizers is not None and model.data_description["task"] == task


def test_zoo_fit_links_the_image_shape_from_the_data(tmp_path, monkeypatch):
    from zoo.cli import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "trainer:\n  max_steps: 1\n  logger: false\n  enable_progress_bar: false\n  enable_checkpointing: false\n"
        "  num_sanity_val_steps: 0\n  limit_val_batches: 1\n"
        "model:\n  class_path: zoo.tasks.image.ImageTask\n  init_args:\n    arch: image_transformer_tiny\n"
        "data:\n  class_path: zoo.data.pixels.PixelDataModule\n  init_args:\n    source: digits\n"
        "    task: super_resolution\n    downsample: 4\n    levels: 17\n    train_limit: 16\n    val_limit: 16\n",
        encoding="utf-8",
    )
    cli = run(["fit", "--config", str(recipe)])
    c = cli.model.net.config
    assert (c.levels, c.height, c.src_height, c.src_width, c.num_classes) == (17, 8, 2, 2, 0)


# -- sampling, measuring, saving ------------------------------------------------------
def with_tokenizers(model, task="unconditional"):
    model.tokenizers = digits(task).tokenizers
    return model


def test_generate_returns_valid_images():
    model = with_tokenizers(tiny("local_2d", "class_conditional"))
    images = model.generate(labels=[0, 3, 9], seed=1)
    assert images.shape == (3, 8, 8) and images.dtype == np.uint8 and images.max() <= 16
    assert np.array_equal(images, model.generate(labels=[0, 3, 9], seed=1))  # a seed repeats the draw
    assert model.generate(4, seed=0, top_k=1).shape == (4, 8, 8)  # labels default to the classes in turn
    sr = with_tokenizers(tiny("local_1d", "super_resolution"), "super_resolution")
    low = digits("super_resolution").low_res("test")[:2]
    assert sr.generate(src=low, temperature=0.8, top_p=0.9, seed=0).shape == (2, 8, 8)


def test_bits_per_dim_of_images_batches_and_data_modules_agree():
    model = with_tokenizers(tiny("local_2d", "class_conditional"))
    dm = digits("class_conditional")
    by_module = model.bits_per_dim(dm)
    by_images = model.bits_per_dim(dm.images("test"), labels=dm.labels("test"), batch_size=7)
    by_batches = model.bits_per_dim(list(dm.test_dataloader()))
    assert by_module == pytest.approx(by_images, abs=1e-6) and by_module == pytest.approx(by_batches, abs=1e-6)
    assert 0 < by_module < 2 * math.log2(17)


def test_save_and_load_round_trip(tmp_path):
    model = with_tokenizers(tiny("local_2d", "super_resolution"), "super_resolution")
    model.save_pretrained(tmp_path / "sr")
    loaded = zoo.load(str(tmp_path / "sr"))
    assert type(loaded).__name__ == "ImageTask" and loaded.hparams.pixel_task == "super_resolution"
    assert loaded.tokenizers[0].height == 4 and loaded.tokenizers[1].height == 8
    tokens, targets, labels, src = inputs(model)
    torch.testing.assert_close(loaded.score(tokens, targets, src=src), model.score(tokens, targets, src=src))


# -- bad input ------------------------------------------------------------------------
def test_bad_input_is_one_clear_line():
    cc = with_tokenizers(tiny("local_2d", "class_conditional"))
    with pytest.raises(ValueError, match=r"got \(2, 7, 7\)"):
        cc.bits_per_dim(np.zeros((2, 7, 7), dtype=np.uint8), labels=[0, 1])  # wrong size
    with pytest.raises(ValueError, match=r"1 channel\), got \(2, 8, 8, 3\)"):
        cc.bits_per_dim(np.zeros((2, 8, 8, 3), dtype=np.uint8), labels=[0, 1])  # wrong channels
    with pytest.raises(ValueError, match=r"label 12 is outside the model's 10 classes 0..9"):
        cc.generate(labels=[1, 12])
    with pytest.raises(ValueError, match="this model is class-conditional: give labels"):
        cc.bits_per_dim(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="wrap a single label in a list"):
        cc.generate(labels=3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cc.generate(2, temperature=0)
    sr = with_tokenizers(tiny("local_2d", "super_resolution"), "super_resolution")
    with pytest.raises(ValueError, match="this is a super-resolution model: give src"):
        sr.generate(2)
    with pytest.raises(ValueError, match=r"this tokenizer reads images of shape \(N, 4, 4\)"):
        sr.generate(src=np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="unknown attention 'global'; choose one of local_1d, local_2d, full"):
        zoo.create("image_transformer_tiny", attention="global")
    with pytest.raises(ValueError, match="pixel_task must be one of"):
        zoo.create("image_transformer_tiny", pixel_task="inpainting")
