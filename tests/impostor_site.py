"""A modified site, for tests only: `fl-client join` with a kit, claiming to be another site.

``python tests/impostor_site.py --kit KIT --data DATA --server HOST:PORT --state-dir DIR --claim NAME``

It plans the join as `fl-client join` does, then replaces the site name in its SuperNode's node config
with ``NAME``: what a site operator who edits FedShield (or starts Flower's SuperNode by hand with their
own ``--node-config``) can always do, since `fl-client join`'s own ``--name`` check runs on the site. The
coordinator must refuse it by its key. Prints each site event; exits 1 with the reason when it is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fedshield.client.site_join import SiteCallbacks, connect, plan_join, take_part
from fedshield.common.errors import FedShieldError


def main() -> int:
    """Join as the site ``--claim`` names, with another site's kit."""
    parser = argparse.ArgumentParser()
    for flag in ("--kit", "--data", "--server", "--state-dir", "--claim"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    plan = plan_join(data=Path(args.data), kit=Path(args.kit), server=args.server, insecure=False, task=None,
                     target=None, name=None, dp=True, epsilon=8.0, delta=0.0, max_grad_norm=1.0, accountant="rdp",
                     site_metrics="dp", allow_repeats=False, metrics_cost=0.05, state_dir=Path(args.state_dir),
                     device="cpu", threads=1, allowed_tasks=[], connect_timeout=60.0)
    plan = dataclasses.replace(plan, node_config=dataclasses.replace(plan.node_config, site_name=args.claim))
    try:
        connect(plan)
        take_part(plan, SiteCallbacks(event=lambda event: print(event, flush=True)))
    except FedShieldError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    print("run complete", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
