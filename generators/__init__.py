"""The two sources of MCC images: FLUX.1 generation of planned scenes and a web scraper.

Stages (records in, records out, each record written as soon as it is done):
- ``FluxGenerator`` (``generators.flux``; imports torch and diffusers, so it is loaded on
  first use), the ``flux`` backend of ``manifests.registry.GENERATORS``;
- ``WebScraper(config)`` (``generators.web``) with the candidates of ``generators.sources``
  (URL lists, Openverse, Wikimedia Commons) turned into records by ``plan_web_records``;
  ``scrape(job, store)`` does all of it for a ``ScrapeJob``.

Both are stages (``manifests.stage``): ``run_stage(stage, store)`` runs and stores them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from generators.download import DownloadConfig, Downloader, DownloadFailure
from generators.licences import DEFAULT_ALLOWED_LICENCES, Licence, licence_codes, parse_licence
from generators.prompts import compose_prompt, prompt_for_record
from generators.sources import Candidate, OpenverseSource, WikimediaCommonsSource, read_url_list
from generators.web import (
    SCRAPE_FAILURE_REASONS,
    ScrapeConfig,
    ScrapeJob,
    WebScraper,
    find_candidates,
    plan_web_records,
    scrape,
)

if TYPE_CHECKING:
    from generators.flux import FluxGenerator

__all__ = [
    "DEFAULT_ALLOWED_LICENCES",
    "SCRAPE_FAILURE_REASONS",
    "Candidate",
    "DownloadConfig",
    "DownloadFailure",
    "Downloader",
    "FluxGenerator",
    "Licence",
    "OpenverseSource",
    "ScrapeConfig",
    "ScrapeJob",
    "WebScraper",
    "WikimediaCommonsSource",
    "compose_prompt",
    "licence_codes",
    "parse_licence",
    "plan_web_records",
    "prompt_for_record",
    "find_candidates",
    "read_url_list",
    "scrape",
]


def __getattr__(name: str) -> Any:
    if name == "FluxGenerator":
        from generators.flux import FluxGenerator

        return FluxGenerator
    raise AttributeError(f"module 'generators' has no attribute {name!r}")
