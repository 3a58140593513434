"""The reason a site's failure is recorded with: the site's own one line, out of Flower's wrappers."""

from __future__ import annotations

from fedshield.strategies.recording import short_reason


def test_ray_wrapped_budget_refusal_reads_as_the_sites_message() -> None:
    wrapped = ("<ClientAppException: \\x1b[36mray::ClientAppActor.run()\\x1b[39m\\n  File ...\\n"
               "Exception ClientAppException occurred. Message: /s/site_0374/privacy-ledger.json: round 12 would "
               "spend ε up to 3.4, above the site\\'s budget 3; the site refuses this round\\'>")
    assert short_reason(wrapped) == ("/s/site_0374/privacy-ledger.json: round 12 would spend ε up to 3.4, above "
                                     "the site's budget 3; the site refuses this round")


def test_plain_message_is_kept_and_capped() -> None:
    assert short_reason("site lost its connection") == "site lost its connection"
    assert len(short_reason("x" * 1000)) == 300
