"""A WeasyPrint URL fetcher that fetches nothing from the network or the wider file system."""
from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit

from weasyprint.urls import URLFetcher, URLFetcherResponse

LOG = logging.getLogger(__name__)


class RefusedURL(ValueError):
    """Raised for a URL the report renderer will not fetch."""


class LocalOnlyFetcher(URLFetcher):
    """Serves ``data:`` URLs and files inside ``allowed_dirs``; refuses everything else.

    WeasyPrint logs a refused resource as a warning and renders without it.
    """

    def __init__(self, *allowed_dirs: Path) -> None:
        super().__init__(timeout=1, allowed_protocols=("data", "file"), allow_redirects=False)
        self._allowed = tuple(Path(d).resolve() for d in allowed_dirs)

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        """Return the resource, or raise :class:`RefusedURL`."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return super().fetch(url, headers)
        if scheme == "file":
            path = Path(unquote(urlsplit(url).path)).resolve()
            if any(path == d or d in path.parents for d in self._allowed) and path.is_file():
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                return URLFetcherResponse(url, body=path.read_bytes(), headers={"Content-Type": kind})
        LOG.warning("report renderer refused to fetch %s", url[:200])
        raise RefusedURL(f"refused to fetch {url[:200]}: reports embed their resources and fetch nothing")
