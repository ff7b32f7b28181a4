"""Relative self-attention (skewing, local blocks, caching) and the Music Transformer."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.data.midi import ChoraleTokenizer, EventTokenizer, read_notes
from zoo.nn.attention import KVCache, causal_mask
from zoo.nn.relative import RelativeSelfAttention, skew
from zoo.registry import build_network

from reference_attention import naive_relative_attention


def local_visible(t: int, block: int) -> torch.Tensor:
    """Query i sees keys from the start of the block before its own, up to itself."""
    qpos, kpos = torch.arange(t)[:, None], torch.arange(t)[None, :]
    return (kpos <= qpos) & (kpos >= (qpos // block - 1) * block)


def naive(att: RelativeSelfAttention, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    a = att.attn
    q, k, v = a._split(a.q_proj(x)), a._split(a.k_proj(x)), a._split(a.v_proj(x))
    out = naive_relative_attention(q, k, v, att.rel_emb, visible)
    return a.out_proj(out.transpose(1, 2).reshape(x.size(0), x.size(1), -1))


def test_skew_aligns_each_row_by_its_position():
    # rel[a, k] scores distance k - (S - 1); skewed[a, j] must hold distance j - (past + a)
    t, past = 3, 2
    s = t + past
    rel = torch.arange(s, dtype=torch.float).expand(t, s) - (s - 1)  # each entry: its distance
    out = skew(rel, past)
    for a in range(t):
        for j in range(past + a + 1):  # visible keys
            assert out[a, j] == j - (past + a)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("block", [0, 4])
@pytest.mark.parametrize("max_dist", [3, 8, 64])
def test_skewing_equals_the_naive_tensor_outputs_and_gradients(share, block, max_dist):
    torch.manual_seed(0)
    att = RelativeSelfAttention(32, 4, max_dist, share_heads=share, block_len=block).double()
    x = torch.randn(2, 13, 32, dtype=torch.double, requires_grad=True)
    visible = local_visible(13, block) if block else causal_mask(13, 13)
    fast, slow = att(x), naive(att, x, visible)
    assert (fast - slow).abs().max() < 1e-10
    g_fast = torch.autograd.grad(fast.square().sum(), [x, att.rel_emb, att.attn.q_proj.weight])
    g_slow = torch.autograd.grad(slow.square().sum(), [x, att.rel_emb, att.attn.q_proj.weight])
    for a, b in zip(g_fast, g_slow):
        assert (a - b).abs().max() < 1e-10


def test_query_chunks_give_the_unchunked_result():
    torch.manual_seed(0)
    att = RelativeSelfAttention(32, 4, 8).double()
    x = torch.randn(2, 23, 32, dtype=torch.double, requires_grad=True)
    whole = att(x)
    g_whole = torch.autograd.grad(whole.square().sum(), [x, att.rel_emb])
    att.query_chunk = 5  # 23 queries in chunks of 5, the last one short
    chunked = att(x)
    assert (chunked - whole).abs().max() < 1e-12
    g_chunked = torch.autograd.grad(chunked.square().sum(), [x, att.rel_emb])
    assert all((a - b).abs().max() < 1e-12 for a, b in zip(g_whole, g_chunked))
    cache = KVCache()  # a long prompt through the cache is chunked too
    steps = torch.cat([att(x[:, :17], cache=cache), att(x[:, 17:], cache=cache)], 1)
    assert (steps - whole).abs().max() < 1e-12


def test_float32_matches_naive_within_tolerance():
    torch.manual_seed(1)
    att = RelativeSelfAttention(64, 8, 32)
    x = torch.randn(3, 40, 64)
    assert (att(x) - naive(att, x, causal_mask(40, 40))).abs().max() < 1e-5


def test_relative_embeddings_are_per_head_unless_shared():
    assert RelativeSelfAttention(32, 4, 10).rel_emb.shape == (4, 10, 8)
    assert RelativeSelfAttention(32, 4, 10, share_heads=True).rel_emb.shape == (1, 10, 8)


@pytest.mark.parametrize("block", [0, 4])
def test_causal_a_later_position_never_changes_an_earlier_output(block):
    torch.manual_seed(0)
    att = RelativeSelfAttention(32, 4, 16, block_len=block)
    x = torch.randn(1, 12, 32)
    y = x.clone()
    y[:, 7:] = torch.randn(1, 5, 32)
    assert torch.allclose(att(x)[:, :7], att(y)[:, :7], atol=1e-6)
    assert not torch.allclose(att(x)[:, 7:], att(y)[:, 7:], atol=1e-3)


def test_local_attention_forgets_beyond_the_previous_block():
    torch.manual_seed(0)
    att = RelativeSelfAttention(32, 4, 16, block_len=4)
    x = torch.randn(1, 12, 32)
    y = x.clone()
    y[:, :4] = 0.0  # block 0: visible to block 1, not to block 2
    assert torch.allclose(att(x)[:, 8:], att(y)[:, 8:], atol=1e-6)
    assert not torch.allclose(att(x)[:, 4:8], att(y)[:, 4:8], atol=1e-3)


@pytest.mark.parametrize("block", [0, 4])
def test_cached_decoding_equals_the_full_pass(block):
    torch.manual_seed(0)
    att = RelativeSelfAttention(32, 4, 8, block_len=block).eval()
    x = torch.randn(2, 21, 32)
    full = att(x)
    cache = KVCache()
    steps = [att(x[:, :6], cache=cache)]  # a prompt spanning two blocks
    steps += [att(x[:, i : i + 1], cache=cache) for i in range(6, 21)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
    assert cache.length == 21


# -- relative pitch ---------------------------------------------------------------------
def random_pitches(b: int, t: int, seed: int = 0) -> torch.Tensor:
    """Pitches 40..80 with some positions that are no pitch (-1), as rests and specials are."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(40, 81, (b, t), generator=g)
    return torch.where(torch.rand(b, t, generator=g) < 0.2, -1, p)


def with_pitch_table(att: RelativeSelfAttention) -> RelativeSelfAttention:
    with torch.no_grad():  # the table starts at zero; give it values so the test means something
        att.pitch_emb.normal_()
    return att


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("interval", [2, 12])
def test_relative_pitch_equals_the_naive_tensor_outputs_and_gradients(share, interval):
    torch.manual_seed(0)
    att = with_pitch_table(RelativeSelfAttention(32, 4, 8, share_heads=share, relative_pitch=interval).double())
    x = torch.randn(2, 13, 32, dtype=torch.double, requires_grad=True)
    pitches = random_pitches(2, 13)
    a = att.attn
    q, k, v = a._split(a.q_proj(x)), a._split(a.k_proj(x)), a._split(a.v_proj(x))
    slow = naive_relative_attention(q, k, v, att.rel_emb, causal_mask(13, 13), att.pitch_emb, pitches)
    slow = a.out_proj(slow.transpose(1, 2).reshape(2, 13, -1))
    att.query_chunk = 5  # the chunked path, as long pieces take it
    fast = att(x, pitches=pitches)
    assert (fast - slow).abs().max() < 1e-10
    params = [x, att.rel_emb, att.pitch_emb]
    for g_fast, g_slow in zip(torch.autograd.grad(fast.square().sum(), params), torch.autograd.grad(slow.square().sum(), params)):
        assert (g_fast - g_slow).abs().max() < 1e-10
    without = RelativeSelfAttention(32, 4, 8, share_heads=share).double()
    without.load_state_dict({k: v for k, v in att.state_dict().items() if k != "pitch_emb"})
    assert (att(x, pitches=pitches) - without(x)).abs().max() > 1e-3  # the table is used
    with torch.no_grad():
        att.pitch_emb.zero_()  # and a zero table is exactly the model without it
    assert (att(x, pitches=pitches) - without(x)).abs().max() < 1e-12


def test_relative_pitch_depends_on_intervals_only():
    torch.manual_seed(0)
    att = with_pitch_table(RelativeSelfAttention(32, 4, 8, relative_pitch=12)).eval()
    x = torch.randn(1, 10, 32)
    pitches = random_pitches(1, 10)
    up = torch.where(pitches >= 0, pitches + 5, -1)  # every pitch a fourth higher
    assert (att(x, pitches=pitches) - att(x, pitches=up)).abs().max() < 1e-6
    other = pitches.clone()
    other[0, pitches[0] >= 0] = 60  # other intervals
    assert (att(x, pitches=pitches) - att(x, pitches=other)).abs().max() > 1e-3


def test_relative_pitch_cached_decoding_equals_the_full_pass():
    torch.manual_seed(0)
    net = build_network("music_transformer_tiny", vocab_size=132, relative_pitch=12).eval()
    for layer in net.layers:
        with_pitch_table(layer.attn)
    tokens = torch.randint(3, 132, (2, 30))
    full = net(tokens)
    state = net.init_state(2)
    steps = [net(tokens[:, :5], state)] + [net(tokens[:, i : i + 1], state) for i in range(5, 30)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
    assert state["pitches"].shape == (2, 30)
    rests = tokens.clone()
    rests[:, 10] = 3  # REST: no pitch, its row changes
    assert (net(rests)[:, 12] - full[:, 12]).abs().max() > 1e-4


def test_relative_pitch_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="relative_pitch must be 0 .* with global relative attention"):
        build_network("music_transformer_tiny", vocab_size=132, relative_pitch=12, block_len=8)
    with pytest.raises(ValueError, match="relative_pitch must be 0"):
        build_network("music_transformer_tiny", vocab_size=132, relative_pitch=-1)
    with pytest.raises(ValueError, match="it is for the chorale vocabulary"):
        build_network("music_transformer_tiny", vocab_size=391, relative_pitch=12)  # performance events
    att = RelativeSelfAttention(32, 4, 8, relative_pitch=4)
    with pytest.raises(ValueError, match="this attention has relative pitch: give pitches"):
        att(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match=r"pitches must be \(B, S\) = \(1, 5\)"):
        att(torch.randn(1, 5, 32), pitches=torch.zeros(1, 4, dtype=torch.long))


def test_cache_grows_in_place_with_spare_room():
    cache = KVCache()
    k = torch.randn(1, 2, 1, 4)
    cache.append(k, k)
    buf = cache._kbuf
    for _ in range(10):
        cache.append(k, k)
    assert cache._kbuf is buf and cache.length == 11  # no reallocation while it fits
    cache.select(torch.tensor([0, 0]))
    assert cache.k.shape == (2, 2, 11, 4)
    cache.append(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    assert cache.length == 12


@pytest.mark.parametrize("attention,block", [("relative", 0), ("relative", 8), ("absolute", 0)])
def test_model_steps_equal_the_full_forward(attention, block):
    torch.manual_seed(0)
    net = build_network("music_transformer_tiny", vocab_size=50, attention=attention, block_len=block).eval()
    tokens = torch.randint(3, 50, (2, 30))
    full = net(tokens)
    state = net.init_state(2)
    steps = [net(tokens[:, :5], state)] + [net(tokens[:, i : i + 1], state) for i in range(5, 30)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="max_relative_distance must be at least 1"):
        build_network("music_transformer_tiny", max_relative_distance=0)
    with pytest.raises(ValueError, match="max_relative_distance must be a whole number"):
        RelativeSelfAttention(32, 4, -3)
    with pytest.raises(ValueError, match="attention must be one of"):
        build_network("music_transformer_tiny", attention="sparse")
    with pytest.raises(ValueError, match="needs attention='relative'"):
        build_network("music_transformer_tiny", attention="absolute", block_len=8)
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        build_network("music_transformer_tiny", d_model=30)


# -- the task: training, generation, MIDI out -----------------------------------------
def chorale_model(**kw):
    tok = ChoraleTokenizer()
    torch.manual_seed(0)
    model = zoo.create("music_transformer_tiny", vocab_size=tok.vocab_size, pad_id=0, bos_id=1, eos_id=2, **kw)
    model.tokenizers = (tok, tok)
    return model.eval()


def test_trains_a_few_steps_on_chorales(tmp_path):
    import lightning as L

    from zoo.data.midi import MIDIDataModule

    grid = [[72 - (i % 4), 67, 64, 48] for i in range(64)]
    path = tmp_path / "Jsb16thSeparated.json"
    import json

    path.write_text(json.dumps({s: [grid] * 4 for s in ("train", "valid", "test")}))
    dm = MIDIDataModule(source="jsb", data_dir=str(tmp_path), encoding="chorale", crop_len=64, batch_size=4)
    from lightning.pytorch.loggers import WandbLogger

    model = zoo.create("music_transformer_tiny", vocab_size=dm.vocab_size, pad_id=0, bos_id=1, eos_id=2, lr=3e-3,
                       log_samples=16)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="zoo-test")
    trainer = L.Trainer(max_steps=8, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, val_check_interval=1.0, check_val_every_n_epoch=1)
    before = trainer.validate(model, dm, verbose=False)[0]["val/loss"]
    trainer.fit(model, dm)
    after = trainer.validate(model, dm, verbose=False)[0]["val/loss"]
    assert after < before - 0.5
    # each validation drew a sample and logged its piano roll
    assert list(tmp_path.glob("wandb/*/files/media/images/samples/piano_roll*.png"))


def test_generation_runs_past_the_training_length_to_a_midi_file_that_reads_back(tmp_path):
    model = chorale_model(max_len=300)  # trained (here: built) for crops far shorter than 256 events
    out = model.generate_midi(tmp_path / "piece.mid", max_events=256, stop_at_end=False, seed=0)
    notes = read_notes(out)
    assert len(notes) > 0 and (tmp_path / "piece.png").stat().st_size > 1000


def test_generate_continues_a_primer_and_is_repeatable():
    model = chorale_model()
    primer = ChoraleTokenizer().encode([[72, 67, 64, 48]] * 4)
    a = model.generate(primer, max_events=20, seed=3, stop_at_end=False)
    b = model.generate(primer, max_events=20, seed=3, stop_at_end=False)
    assert a == b and a[:16] == primer and len(a) == 36
    assert model.tokenizers[1].eos_id not in a  # stop_at_end=False never draws the end


def test_performance_model_continues_a_midi_primer(tmp_path):
    from zoo.data.midi import write_notes

    tok = EventTokenizer()
    torch.manual_seed(0)
    model = zoo.create("music_transformer_tiny", vocab_size=tok.vocab_size, pad_id=0, bos_id=1, eos_id=2)
    model.tokenizers = (tok, tok)
    primer = write_notes([(60, 0.0, 0.5, 80), (64, 0.5, 1.0, 80)], tmp_path / "primer.mid")
    ids = model.eval().generate(str(primer), max_events=10, seed=0, stop_at_end=False)
    assert ids[: len(tok.encode_file(primer))] == tok.encode_file(primer)


def test_too_long_primer_is_cut_with_a_warning(caplog):
    model = chorale_model(attention="absolute", max_len=64)
    ids = model.generate([10] * 100, max_events=30, stop_at_end=False, seed=0)
    assert len(ids) == 63 and "keeping its last 33" in caplog.text


def test_bad_generation_input_is_a_one_line_error(tmp_path):
    model = chorale_model()
    with pytest.raises(ValueError, match="primer event id 500 is not an event"):
        model.generate([10, 500])
    with pytest.raises(ValueError, match="max_events must be a whole number"):
        model.generate(max_events=0)
    with pytest.raises(ValueError, match="needs a performance-event model"):
        model.generate(str(tmp_path / "x.mid"))
    with pytest.raises(ValueError, match="does not end in .mid"):
        model.generate_midi(tmp_path / "x.wav")


def test_save_and_load_round_trip(tmp_path):
    model = chorale_model(block_len=8)
    model.save_pretrained(tmp_path / "m")
    back = zoo.load(str(tmp_path / "m"))
    tokens = torch.randint(3, 132, (1, 20))
    assert torch.equal(back.net(tokens), model.net(tokens))
    assert back.tokenizers[1].to_str() == ChoraleTokenizer().to_str()


# -- positions of training crops, and NLL by position -----------------------------------
def fake_jsb(tmp_path, steps: int = 64):
    import json

    grid = [[72 - (i % 4), 67, 64, 48] for i in range(steps)]
    (tmp_path / "Jsb16thSeparated.json").write_text(json.dumps({s: [grid] * 4 for s in ("train", "valid", "test")}))
    return grid


def test_training_crops_keep_their_positions_in_the_piece(tmp_path):
    """A crop starting at token a of ``<s> piece </s>`` says so: the absolute model then reads the
    positions whole-piece evaluation gives the same tokens (the soprano of a step at 1 + 4k)."""
    from zoo.data.midi import MIDIDataModule

    grid = fake_jsb(tmp_path)
    dm = MIDIDataModule(source="jsb", data_dir=str(tmp_path), encoding="chorale", crop_len=32, batch_size=4,
                        augment=False)
    tok = dm.tokenizer
    piece = [tok.bos_id] + tok.encode(grid) + [tok.eos_id]
    batch = next(iter(dm.train_dataloader()))
    assert batch["positions"].shape == (4,)
    for tokens, targets, start in zip(batch["tokens"], batch["targets"], batch["positions"].tolist()):
        assert start == 0 or start % 4 == 1  # <s>, or the soprano of a step
        assert tokens.tolist() == piece[start : start + 32] and targets.tolist() == piece[start + 1 : start + 33]


def test_absolute_positions_of_a_crop_are_its_positions_in_the_piece_and_relative_ignores_them():
    tokens = torch.randint(3, 60, (2, 12))
    start = torch.tensor([0, 9])
    absolute = chorale_model(attention="absolute").net
    x = absolute._embed(tokens, 0, start)
    plain = absolute.embed(tokens) * absolute.config.d_model**0.5
    torch.testing.assert_close(x[1], plain[1] + absolute.positions.pe[9:21])
    torch.testing.assert_close(x[0], plain[0] + absolute.positions.pe[:12])
    assert not torch.allclose(absolute(tokens, positions=start)[1], absolute(tokens)[1])
    relative = chorale_model(attention="relative").net
    torch.testing.assert_close(relative(tokens, positions=start), relative(tokens))


def test_nll_by_position_splits_the_mean_nll_into_ranges_of_positions():
    from zoo.evaluate import nll_by_position

    model = chorale_model(attention="relative")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 60, (3, 300), generator=g)
    targets = torch.randint(3, 60, (3, 300), generator=g)
    targets[2, 200:] = 0  # padding does not count
    table = nll_by_position(model, [{"tokens": tokens, "targets": targets}])
    assert list(table) == ["0-127", "128-255", "256-511"]  # ranges without a target are left out
    with torch.no_grad():
        nll = -model.net.score(tokens, targets).double()
    real = targets.ne(0)
    for name, (a, b) in {"0-127": (0, 128), "128-255": (128, 256), "256-511": (256, 300)}.items():
        assert abs(table[name] - float(nll[:, a:b][real[:, a:b]].mean())) < 1e-4
    assert abs(model.mean_nll([{"tokens": tokens, "targets": targets}]) - float(nll[real].mean())) < 1e-4
