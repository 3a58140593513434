"""The coordinator's own update on examples it holds and trusts (``--trusted-data``): the direction an
honest site's update shares, whatever data the sites hold.

Why our own: the update checks' direction test (:mod:`fedshield.strategies.update_checks`) otherwise
compares each site with the other sites' median update, and among sites whose data differ an honest site
whose data no other site holds points away from that median as far as a sign-flipper does. A reference
the sites cannot move tells them apart when the trusted examples cover the classes every site holds:
the idea of FLTrust (Cao et al. 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS), whose server likewise trains a root data set of its own each round. Flower's
strategies have no such reference.

The coordinator trains the global model it sent that round on the trusted examples, without DP (the
examples are its own), for the run's local epochs and batch size, with the task's non-private learning
rate and a seed fixed by the run seed and the round, so a resumed run computes the same reference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedshield.common.errors import DataError
from fedshield.common.run_config import RunConfig
from fedshield.common.torch_arrays import model_to_ndarrays, ndarrays_to_model
from fedshield.tasks.base import DataSchema, TaskOptions
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task
from fedshield.tasks.trusted_examples import FLAG, load_trusted_data, trusted_learning_rate

log = logging.getLogger("fedshield.server")


class TrustedReference:
    """``reference(round, global_arrays)`` → the global model trained one round on the trusted examples,
    packed as the model's arrays (:func:`~fedshield.common.torch_arrays.model_to_ndarrays`)."""

    def __init__(self, cfg: RunConfig, schema: DataSchema) -> None:
        self.task = get_task(cfg.task)
        data = load_trusted_data(self.task, Path(cfg.trusted_data), seed=cfg.seed, model=cfg.model)
        mismatch = schema.mismatch(data.schema)
        if mismatch:
            raise DataError(f"{FLAG} {cfg.trusted_data}: its data differ from the sites' ({mismatch}); pass examples "
                            "of the federation's task and format")
        # every trusted example trains: the coordinator keeps no validation split of its own
        self.examples = data.all_examples()
        self.model = build_model(self.task, schema, TaskOptions(model=cfg.model, seed=cfg.seed), seed=cfg.seed)
        self.cfg = cfg
        self.lr = trusted_learning_rate(self.task)
        log.info("direction test against the coordinator's update on %d trusted examples (%s)",
                 len(self.examples), cfg.trusted_data)

    def __call__(self, server_round: int, global_arrays: list[np.ndarray]) -> list[np.ndarray]:
        ndarrays_to_model(self.model, global_arrays)
        self.model.train()
        seed = self.cfg.seed * 1_000_003 + server_round
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout, a GAN's latents: the same reference on a resumed run
            loader = DataLoader(self.examples, batch_size=min(self.cfg.batch_size, len(self.examples)), shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            optimizer = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)
            self.task.train(self.model, loader, optimizer, epochs=self.cfg.local_epochs, device=torch.device("cpu"))
        return model_to_ndarrays(self.model)

