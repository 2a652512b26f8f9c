"""Where web images come from: URL list files and image search APIs, as ``Candidate`` s."""

from generators.sources.candidate import Candidate
from generators.sources.openverse import OpenverseSource
from generators.sources.search import SearchSource, SourceError, group_query
from generators.sources.urllist import UrlList, UrlListError, read_url_list
from generators.sources.wikimedia import WikimediaCommonsSource

__all__ = [
    "Candidate",
    "OpenverseSource",
    "SearchSource",
    "SourceError",
    "UrlList",
    "UrlListError",
    "WikimediaCommonsSource",
    "group_query",
    "read_url_list",
]
