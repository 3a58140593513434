"""``dcgan``: a DCGAN that learns to generate 28×28 greyscale images, with DP on the discriminator only.

Only the discriminator sees private data, so only it trains under DP-SGD (the platform wraps
``private_part(model)`` with Opacus). The generator learns from the discriminator's outputs on
generated images alone; by the post-processing property of DP its weights carry the discriminator's
guarantee (Xie et al. 2018, "Differentially Private Generative Adversarial Network").

One discriminator step sees the Poisson-sampled real batch together with a *fixed* number of
generated images (the expected batch size, not the drawn one): adding or removing one real example
then changes exactly one clipped per-sample gradient of the step, the sensitivity the accountant
assumes. Metrics: ``frechet_digits`` (:mod:`fedshield.tasks.frechet_digits`, lower is better) and
the discriminator's ``loss``. Sites hold images in ``digits-cnn``'s formats (labels are ignored).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.common.errors import DataError
from fedshield.tasks.base import DataSchema, RecordStatistics, SiteData, TaskOptions, TrainResult
from fedshield.tasks.dcgan_model import DCGAN
from fedshield.tasks.digits_cnn import DigitsCNNTask
from fedshield.tasks.frechet_digits import features, frechet_distance
from fedshield.tasks.holdout import holdout_indices

SCHEMA = DataSchema(kind="generation", input_shape=(1, 28, 28), num_outputs=1)
GENERATOR_LR = 1e-3  # Adam, β₁ = 0.5 (Radford et al. 2016; 2e-4 there, for far more steps than a round has)
GENERATOR_STEPS = 2  # per discriminator step: a private discriminator otherwise wins (measured, docs/tasks/dcgan.md)
SAMPLE_SEED = 1234  # fixed latent codes: evaluation and sample grids compare like with like


class DCGANTask(DigitsCNNTask):
    """DCGAN on 28×28 greyscale images; the platform's (DP) optimizer trains the discriminator."""

    name = "dcgan"
    models = ("auto",)  # one model: any other --model is refused before a run starts
    summary = ("DCGAN generating 28×28 greyscale images; DP-SGD on the discriminator, the generator private "
               "by post-processing; Fréchet distance in a digits-CNN feature space, a PNG sample grid each round")
    data_format = ("data.npz with x (N×28×28 uint8) (y optional, ignored), or images/<label>/*.png "
                   "(28×28 greyscale); 20% held out for validation")
    metrics = ("loss", "frechet_digits")
    dp_mode = "hooks"  # two inputs per step (real and generated): per-sample gradients by hooks
    reads_sites_of = ("digits-cnn",)

    def resolve_model(self, model: str, *, pretrained: bool, dp: bool) -> str:
        """``auto`` stays ``auto``: the GAN has one network (digits-cnn's DP variant is not inherited)."""
        return model

    def default_lr(self, dp: bool) -> float:
        """SGD step of the discriminator: 0.05 with DP-SGD, 0.02 without (measured, docs/tasks/dcgan.md)."""
        return 0.05 if dp else 0.02

    def private_part(self, model: nn.Module) -> nn.Module:
        """The module that touches private data: the platform makes only it private."""
        gan: DCGAN = model  # type: ignore[assignment]  # the task's own model, built by build_model
        return gan.discriminator

    def criterion(self, schema: DataSchema) -> nn.Module:
        return nn.BCEWithLogitsLoss()

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        path = Path(path)
        npz_path = path / "data.npz"
        if npz_path.is_file():
            try:
                with np.load(npz_path, allow_pickle=False) as npz:
                    unlabelled = "x" in npz.files and "y" not in npz.files
                    x = npz["x"] if unlabelled else None
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                unlabelled = False  # digits-cnn's loader names the problem
            if unlabelled and x is not None:  # a generator needs no labels
                if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
                    raise DataError(f"{npz_path}: x is {x.dtype} {x.shape}; dcgan needs N×28×28 uint8 greyscale images")
                train, val = holdout_indices(x, val_fraction=options.val_fraction, seed=options.seed,
                                             where=str(path))
                xt = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
                y = torch.zeros(len(x), dtype=torch.long)
                return SiteData(TensorDataset(xt[train], y[train]), TensorDataset(xt[val], y[val]), SCHEMA, path)
        site = super().load_site(path, options)
        return SiteData(site.train, site.val, SCHEMA, site.source)

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        return DCGAN()

    def train(self, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *, epochs: int,
              device: torch.device, criterion: nn.Module | None = None,
              private_module: GradSampleModule | None = None) -> TrainResult:
        """Alternate a discriminator step (``optimizer``, private when DP is on) on real + generated
        images and a generator step (Adam, its own) through the discriminator, per batch.

        ``private_module`` is Opacus' wrapper of the discriminator: its per-sample hooks are switched
        off during the generator step, whose gradients flow through the discriminator but must not
        count as a private step (and would break Poisson sampling's one-backward-per-step rule).
        """
        gan: DCGAN = model  # type: ignore[assignment]  # the task's own model, from build_model
        gen_opt = torch.optim.Adam(gan.generator.parameters(), lr=GENERATOR_LR, betas=(0.5, 0.999))
        # generated images per step: the expected batch size, fixed; under DP the DP optimizer's E[B], which
        # comes from the site's released count (the exact N would shape every update)
        n_fake = int(getattr(optimizer, "expected_batch_size", 0) or 0) or max(
            1, round(len(loader.dataset) / max(len(loader), 1)))  # type: ignore[arg-type]  # a TensorDataset, sized
        bce = nn.functional.binary_cross_entropy_with_logits
        gan.train()
        total, steps, examples = 0.0, 0, 0
        for _ in range(epochs):
            for x, _y in loader:
                if len(x) == 0:
                    continue
                x = x.to(device)
                z = torch.randn(n_fake, gan.generator.latent, device=device)
                with torch.no_grad():
                    fake = gan.generator(z)
                optimizer.zero_grad(set_to_none=True)
                target = torch.cat([torch.ones(len(x), device=device), torch.zeros(n_fake, device=device)])
                d_loss = bce(gan.discriminator(torch.cat([x, fake])), target)
                d_loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if private_module is not None:
                    private_module.disable_hooks()
                try:
                    for _ in range(GENERATOR_STEPS):
                        gen_opt.zero_grad(set_to_none=True)
                        z = torch.randn(n_fake, gan.generator.latent, device=device)
                        g_loss = bce(gan.discriminator(gan.generator(z)), torch.ones(n_fake, device=device))
                        g_loss.backward()
                        gen_opt.step()
                finally:
                    if private_module is not None:
                        private_module.enable_hooks()
                    optimizer.zero_grad(set_to_none=True)  # the generator step's discriminator grads
                total += float(d_loss.detach())
                steps += 1
                examples += len(x)
        return TrainResult(loss=total / steps if steps else float("nan"), steps=steps, examples=examples)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TensorDataset, *, device: torch.device,
                 batch_size: int = 256) -> dict[str, float]:
        """``frechet_digits`` between ``data``'s images and as many generated from fixed codes, and
        the discriminator's loss on both (real = 1, generated = 0)."""
        gan: DCGAN = model  # type: ignore[assignment]  # the task's own model, from build_model
        gan.eval()
        real = data.tensors[0]
        fake = gan.sample(len(real), seed=SAMPLE_SEED)
        logits = torch.cat([gan.discriminator(chunk.to(device)).cpu()
                            for chunk in torch.cat([real, fake]).split(batch_size)])
        target = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, target))
        out = {"loss": loss}
        if len(real) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["frechet_digits"] = frechet_distance(features(real), features(fake))
        return out

    @torch.no_grad()
    def per_example_statistics(self, model: nn.Module, data: TensorDataset, *, device: torch.device,
                               batch_size: int = 256, loss_only: bool = False) -> RecordStatistics:
        """Each real image's discriminator loss, −log D(x) (bounded at 4: D(x) below 2 %); the generated
        half of :meth:`evaluate`'s loss involves no private record and its size would follow the exact
        count, so a site under DP reports the loss on its real images only. The Fréchet distance
        compares the whole set's feature covariance, not a sum of per-record values: not reported."""
        gan: DCGAN = model  # type: ignore[assignment]  # the task's own model, from build_model
        gan.eval()
        logits = torch.cat([gan.discriminator(x.to(device)).reshape(-1).cpu() for x, _ in
                            DataLoader(data, batch_size=batch_size)])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
        return RecordStatistics({"loss": loss.double().numpy()}, {"loss": 4.0})

    def sample_grid(self, model: nn.Module, *, rows: int = 8) -> bytes:
        """PNG bytes of a rows×rows grid of generated images (fixed latent codes, 1-pixel gaps)."""
        from PIL import Image

        gan: DCGAN = model  # type: ignore[assignment]  # the task's own model, from build_model
        images = (gan.sample(rows * rows, seed=SAMPLE_SEED).squeeze(1).numpy() * 255).round().astype(np.uint8)
        side = images.shape[-1] + 1
        grid = np.zeros((rows * side + 1, rows * side + 1), dtype=np.uint8)
        for i, img in enumerate(images):
            r, c = divmod(i, rows)
            grid[1 + r * side:1 + r * side + img.shape[0], 1 + c * side:1 + c * side + img.shape[1]] = img
        buffer = io.BytesIO()
        image = Image.fromarray(grid, mode="L")
        image.resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(buffer, "PNG")
        return buffer.getvalue()
