"""Image generation: one LightningModule for the Image Transformer's three tasks.

``pixel_task`` says what the network reads beside the earlier pixels: nothing
(``unconditional``), the class label (``class_conditional``) or a low-resolution copy of
the image (``super_resolution``). All three are trained with the cross-entropy of every
sub-pixel's intensity and measured in **bits per dimension**: the mean negative
log-likelihood per sub-pixel, in nats, divided by ln 2 (``val/bpd``, ``test/bpd``;
``val/loss`` is the same figure in nats).

Every hyperparameter that comes from the data (``vocab_size``, ``pad_id``, ``bos_id``,
``levels``, ``height``, ``width``, ``channels``, ``num_classes``, ``src_height``,
``src_width``, ``pixel_task``) is linked from :class:`zoo.data.pixels.PixelDataModule`
by ``zoo fit``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.metrics import TokenNLL
from zoo.models.base import check_whole
from zoo.nn.decoding import check_sampling, filter_logits
from zoo.registry import build_network
from zoo.tasks.base import ZooModule

PIXEL_TASKS = ("unconditional", "class_conditional", "super_resolution")
LN2 = math.log(2.0)


class ImageTask(ZooModule):
    """Train, measure and sample an Image Transformer.

    Args:
        arch: registered architecture name (``zoo list 'image*'``).
        arch_args: overrides of the architecture's config (``attention``, ``d_model``, ...).
        vocab_size, pad_id, bos_id, levels, height, width, channels: the pixel tokenizer's,
            linked from the data module (left at None: the architecture's defaults).
        num_classes: classes of the source; used only when ``pixel_task`` is class-conditional.
        src_height, src_width: the low-resolution image of super-resolution (0 otherwise).
        pixel_task: ``unconditional``, ``class_conditional`` or ``super_resolution``.
        label_smoothing: training loss only; evaluation is the exact NLL.
        val_samples: images sampled at the end of each validation epoch and logged to W&B
            when a WandbLogger is attached (0: none).
        sample_every_n_epochs: how often to draw them.
        init_from: a pretrained name or folder to start from (fine-tuning).
        optim: the optimiser settings (``lr``, ``warmup_steps``, ``optimizer``, ...), which
            every task takes: see :class:`~zoo.tasks.base.ZooModule`.
    """

    task_name = "image"

    def __init__(
        self,
        arch: str = "image_transformer_small",
        arch_args: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        pad_id: int | None = None,
        bos_id: int | None = None,
        levels: int | None = None,
        height: int | None = None,
        width: int | None = None,
        channels: int | None = None,
        num_classes: int = 0,
        src_height: int = 0,
        src_width: int = 0,
        pixel_task: str = "unconditional",
        label_smoothing: float = 0.0,
        val_samples: int = 16,
        sample_every_n_epochs: int = 1,
        init_from: str | None = None,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        if pixel_task not in PIXEL_TASKS:
            raise ValueError(f"pixel_task must be one of {', '.join(PIXEL_TASKS)}, not {pixel_task!r}")
        check_whole("val_samples", val_samples, minimum=0, note=" (0: none)")
        check_whole("sample_every_n_epochs", sample_every_n_epochs)
        arch, arch_args, start = self.resolve_start(arch, arch_args, init_from)
        self.save_hyperparameters(ignore=["start"])  # arch and arch_args as resolved
        data = dict(vocab_size=vocab_size, pad_id=pad_id, bos_id=bos_id, levels=levels, height=height, width=width,
                    channels=channels)
        data = {k: v for k, v in data.items() if v is not None}
        data["num_classes"] = num_classes if pixel_task == "class_conditional" else 0
        sr = pixel_task == "super_resolution"
        data.update(src_height=src_height if sr else 0, src_width=src_width if sr else 0)
        if sr and not (src_height and src_width):
            raise ValueError("super_resolution needs src_height and src_width (zoo fit links them from the data)")
        if pixel_task == "class_conditional" and num_classes < 1:
            raise ValueError("class_conditional needs num_classes of 1 or more (zoo fit links it from the data)")
        self.net = build_network(arch, **{**data, **arch_args})
        self.take_start(start)
        self.nll = nn.ModuleDict({"val": TokenNLL(), "test": TokenNLL()})

    # -- data -------------------------------------------------------------------------
    def _conditions(self, batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        c = self.net.config
        return (batch.get("labels") if c.num_classes else None), (batch.get("src") if c.src_height else None)

    def on_fit_start(self) -> None:
        """Also check that the data's images are the ones the network was built for."""
        super().on_fit_start()
        dm = getattr(self.trainer, "datamodule", None)
        shape = getattr(dm, "image_shape", None)
        tok = getattr(dm, "tokenizer", None)
        c = self.net.config
        if shape is not None and tok is not None and (tuple(shape) != (c.height, c.width, c.channels) or tok.levels != c.levels):
            h, w, ch = shape
            raise ValueError(
                f"the data's images are {h}x{w}x{ch} with {tok.levels} levels but the model was built for "
                f"{c.height}x{c.width}x{c.channels} with {c.levels}; build the model from the data "
                "(zoo fit links them) or use data of the model's shape"
            )

    # -- training ---------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels, src = self._conditions(batch)
        targets = batch["targets"]
        if self.hparams.label_smoothing:
            logits = self.net(batch["tokens"], labels, src)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   label_smoothing=self.hparams.label_smoothing)
        else:  # the targets' log-probabilities only (a dmol output never builds all levels' masses)
            loss = -self.net.score(batch["tokens"], targets, labels, src).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=targets.numel())
        self.log("train/bpd", loss / LN2, batch_size=targets.numel())
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        labels, src = self._conditions(batch)
        logp = self.net.score(batch["tokens"], batch["targets"], labels, src)
        self.nll[prefix].update(logp, torch.ones_like(logp, dtype=torch.bool))

    def _log_bpd(self, prefix: str) -> None:
        nll = self.nll[prefix].compute()
        self.nll[prefix].reset()
        self.log(f"{prefix}/loss", nll)
        self.log(f"{prefix}/bpd", nll / LN2, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_bpd("val")
        self._log_samples()

    def on_test_epoch_end(self) -> None:
        self._log_bpd("test")

    def _log_samples(self) -> None:
        """A grid of samples to W&B at the end of a validation epoch, when a WandbLogger is attached."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.sanity_checking or not self.hparams.val_samples or self.tokenizers is None:
            return
        if (trainer.current_epoch + 1) % self.hparams.sample_every_n_epochs:
            return
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        from zoo.data.pixels import image_grid

        n, src, labels = self.hparams.val_samples, None, None
        caption = f"epoch {trainer.current_epoch}"
        if self.net.config.src_height:
            src = trainer.datamodule.low_res("val")[:n]
        elif self.net.config.num_classes:
            labels = list(np.arange(n) % self.net.config.num_classes)
            caption += ", classes " + " ".join(map(str, labels))
        images = self.generate(n, labels=labels, src=src, seed=trainer.current_epoch)
        grid = image_grid(images, pad_value=0).astype(np.float64) / self.tokenizers[1].max_value
        grid = (np.clip(grid, 0, 1) * 255).astype(np.uint8)
        for logger in loggers:
            logger.log_image(key="val/samples", images=[grid], step=trainer.global_step, caption=[caption])

    # -- inference --------------------------------------------------------------------
    def _tokenizer(self, which: int = 1) -> Any:
        if self.tokenizers is None:
            raise RuntimeError("this model has no pixel tokenizer attached; load it with zoo.load or fit it on a data module")
        return self.tokenizers[which]

    @staticmethod
    def _as_tensor(x: Any, device: Any) -> Tensor | None:
        return None if x is None else torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, device=device)

    def forward(self, tokens: Tensor, labels: Any = None, src: Tensor | None = None) -> Tensor:
        """Pixel tokens (B, T) = <s> + pixels[:-1] -> logits (B, T, levels), inputs checked first."""
        labels = self._as_tensor(labels, tokens.device if isinstance(tokens, Tensor) else None)
        self.net.check_inputs(tokens, labels, src)
        return self.net(tokens, labels, src)

    @torch.no_grad()
    def score(self, tokens: Tensor, targets: Tensor, labels: Any = None, src: Tensor | None = None) -> Tensor:
        """log P(targets[b, t] | the earlier sub-pixels) as (B, T), in nats, inputs checked first."""
        labels = self._as_tensor(labels, tokens.device if isinstance(tokens, Tensor) else None)
        self.net.check_inputs(tokens, labels, src)
        from zoo.models.base import check_token_ids

        check_token_ids(targets, self.net.config.levels, "target intensities")
        if tokens.shape != targets.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and targets {tuple(targets.shape)} must have the same shape")
        return self.net.score(tokens, targets, labels, src)

    def _image_batches(self, images: Any, labels: Any, src: Any, batch_size: int) -> Iterable[dict[str, Tensor]]:
        """Raw images (N, H, W[, C]) -> batches like the data module's, tokenised by the model's tokenizers."""
        tok = self._tokenizer(1)
        pixels = tok.encode(images)
        n = len(pixels)
        label_t = self._as_tensor(labels, None)
        src_t = self._tokenizer(0).encode(src) if src is not None else None
        if src_t is None and self.net.config.src_height:
            src_t = self._tokenizer(0).encode(_downsample_to(images, self.net.config))
        for i in range(0, n, batch_size):
            targets = pixels[i : i + batch_size]
            tokens = torch.cat([torch.full((len(targets), 1), tok.bos_id), targets[:, :-1]], dim=1)
            batch = {"tokens": tokens, "targets": targets}
            if label_t is not None:
                batch["labels"] = label_t[i : i + batch_size]
            if src_t is not None:
                batch["src"] = src_t[i : i + batch_size]
            yield batch

    @torch.no_grad()
    def bits_per_dim(
        self, data: Any, *, split: str = "test", labels: Any = None, src: Any = None, batch_size: int = 100
    ) -> float:
        """Mean NLL per sub-pixel in bits of a data module's ``split``, of batches, or of raw images.

        ``data`` is a :class:`~zoo.data.pixels.PixelDataModule`, an iterable of its batches
        (``tokens``, ``targets``, ``labels``, ``src``), or images (N, H, W[, C]) of
        intensities with their ``labels`` (class-conditional) or low-resolution ``src``
        (super-resolution; by default the images shrunk as the data module does).
        """
        check_whole("batch_size", batch_size, note=" images")
        if hasattr(data, "test_dataloader") and hasattr(data, "setup"):
            data.setup("test" if split == "test" else "validate")
            batches: Iterable[Any] = data.test_dataloader() if split == "test" else data.val_dataloader()
        elif isinstance(data, (np.ndarray, Tensor)):
            batches = self._image_batches(data, labels, src, batch_size)
        else:
            batches = data
        nll = TokenNLL().to(self.device)
        self.eval()
        seen = 0
        for batch in batches:
            if not isinstance(batch, dict) or "tokens" not in batch or "targets" not in batch:
                raise TypeError("bits_per_dim takes a PixelDataModule, batches with tokens and targets, or images (N, H, W[, C])")
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            lab, low = self._conditions(batch)
            self.net.check_inputs(batch["tokens"], lab, low)
            logp = self.net.score(batch["tokens"], batch["targets"], lab, low)
            nll.update(logp, torch.ones_like(logp, dtype=torch.bool))
            seen += 1
        if not seen:
            raise ValueError("no images to measure: the data is empty")
        return float(nll.compute()) / LN2

    @torch.no_grad()
    def generate(
        self,
        n: int = 16,
        labels: Any = None,
        src: Any = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Sample images by ancestral sampling, one sub-pixel at a time; returns uint8 (N, H, W[, C]).

        Args:
            n: images to draw. With ``labels`` or ``src`` given, one image per label or
                low-resolution image is drawn instead.
            labels: class indices, for a class-conditional model (default: classes in turn).
            src: low-resolution images (N, h, w[, C]) of intensities, for super-resolution.
            temperature, top_k, top_p: reshape each sub-pixel's distribution before drawing.
            seed: for repeatable draws.
            progress: show a progress bar over the positions.
        """
        c = self.net.config
        tok = self._tokenizer(1)
        if labels is None and src is None:
            check_whole("n", n, note=" images")
        check_whole("top_k", top_k, minimum=0, note=" (0: no limit)")
        check_sampling(temperature, top_p)
        device = self.device
        src_t = None
        if src is not None:
            if not c.src_height:
                raise ValueError("this model is not a super-resolution model and takes no src; leave src=None")
            src_t = self._tokenizer(0).encode(src).to(device)
            n = len(src_t)
        elif c.src_height:
            raise ValueError(f"this is a super-resolution model: give src, the {c.src_height}x{c.src_width} low-resolution images")
        label_t = None
        if labels is not None:
            if isinstance(labels, (int, np.integer)):
                raise TypeError("labels must be a list of class indices, one per image; wrap a single label in a list")
            label_t = self._as_tensor(labels, device)
            if label_t.dim() == 1 and src_t is None:
                n = len(label_t)
        elif c.num_classes:
            label_t = torch.arange(n, device=device) % c.num_classes
        self.net.check_inputs(None, label_t, src_t)
        if label_t is not None and label_t.numel() != n:
            raise ValueError(f"{label_t.numel()} labels for {n} images; give one label per image")
        gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        self.eval()
        state = self.net.init_state(n, label_t, src_t, device)
        token = torch.full((n, 1), tok.bos_id, dtype=torch.long, device=device)
        out = torch.empty(n, self.net.seq_len, dtype=torch.long, device=device)
        positions: Iterable[int] = range(self.net.seq_len)
        if progress:
            from tqdm.auto import tqdm

            positions = tqdm(positions, desc="sampling", unit="px")
        for t in positions:
            logits = filter_logits(self.net.step(token, state), temperature, top_k, top_p)
            token = torch.multinomial(logits.softmax(-1), 1, generator=gen)
            out[:, t] = token[:, 0]
        return tok.decode(out.cpu())


def _downsample_to(images: Any, config: Any) -> np.ndarray:
    """Images shrunk to the model's low-resolution size, as the data module shrinks them."""
    from zoo.data.pixels import downsample

    x = np.asarray(images.cpu() if isinstance(images, Tensor) else images)
    if x.ndim < 3:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    factor = x.shape[1] // config.src_height
    return downsample(x, factor)


def independent_pixel_bpd(
    train: Any, test: Any, levels: int, train_labels: Any = None, test_labels: Any = None, alpha: float = 1.0
) -> float:
    """Bits per dimension of the per-pixel independent baseline.

    Each position's intensity distribution is counted on ``train`` tokens (N, T) with
    add-``alpha`` smoothing, then the test tokens (M, T) are scored under it, every
    position independently: the cross-entropy, in bits, of the marginals. With labels, one
    set of marginals per class (the class-conditional baseline).
    """
    tr, te = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
        raise ValueError(f"train and test must be token arrays (N, T) of one length, got {tr.shape} and {te.shape}")
    groups = [(np.ones(len(tr), bool), np.ones(len(te), bool))]
    if train_labels is not None and test_labels is not None:
        a, b = np.asarray(train_labels), np.asarray(test_labels)
        groups = [(a == k, b == k) for k in np.unique(np.concatenate([a, b]))]
    total = 0.0
    for in_train, in_test in groups:
        counts = np.full((tr.shape[1], levels), alpha)
        np.add.at(counts, (np.broadcast_to(np.arange(tr.shape[1]), tr[in_train].shape), tr[in_train]), 1.0)
        logp = np.log2(counts / counts.sum(1, keepdims=True))  # (T, levels)
        total -= logp[np.arange(te.shape[1])[None, :], te[in_test]].sum()
    return float(total / te.size)
