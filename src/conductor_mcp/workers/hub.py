"""Conductor GGUFs on the Hugging Face Hub: resolve `hf` + `file`, download once, reuse offline.

Files go to huggingface_hub's standard cache (HF_HOME / HF_HUB_CACHE), shared with every other tool
that uses it. Finding a cached file reads only the cache, never the network, so a registry load or a
plan with the file present works offline (huggingface_hub itself would ask the Hub whether `main`
moved); only `download` talks to the Hub.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..models import ConductorSpec

# llama.cpp's split GGUFs: `name-00001-of-00003.gguf`; it loads the first and finds the rest beside it
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Transport errors differ by huggingface_hub version (requests < 1.0, httpx 1.x, httpx2 2.x).
_TRANSPORT_MODULES = frozenset({"requests", "urllib3", "httpx", "httpx2", "httpcore"})


@dataclass(frozen=True)
class HubGGUF:
    """A conductor's `hf` (repo id), `file` (a name or a glob) and `revision`."""

    repo: str
    pattern: str
    revision: str = "main"

    @classmethod
    def of(cls, spec: ConductorSpec) -> HubGGUF | None:
        if not spec.hf or not spec.file:
            return None
        return cls(spec.hf, spec.file, spec.revision or "main")

    @property
    def label(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf:{self.repo}{at} {self.pattern}"


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def select(files: Iterable[str], ref: HubGGUF) -> list[str]:
    """The repo files to fetch for `ref.pattern`, the one llama.cpp loads first; raises when none or ambiguous."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    # case-insensitive: uploaders spell the same quantisation Q4_K_M or q4_k_m
    matches = [f for f in ggufs if fnmatch.fnmatchcase(f.lower(), ref.pattern.lower())]
    if not matches:
        listing = _listing(ggufs) if ggufs else "none ends in .gguf"
        raise ConfigError(f"conductor: field 'file': no file in {ref.repo} matches {ref.pattern!r}; files: {listing}")
    splits = [_SPLIT.match(f) for f in matches]
    models = {(m["stem"], m["total"]) if m else (f, "") for f, m in zip(matches, splits, strict=True)}
    if len(models) > 1:
        raise ConfigError(f"conductor: field 'file': {len(matches)} files in {ref.repo} match {ref.pattern!r}: "
                          f"{_listing(matches)}; give the exact file name of one")
    stem, total = models.pop()
    if not total:
        return matches
    parts = [f for f in ggufs if (m := _SPLIT.match(f)) and (m["stem"], m["total"]) == (stem, total)]
    if len(parts) != int(total):
        raise ConfigError(f"conductor: field 'file': {ref.repo} has {len(parts)} of the {int(total)} parts of "
                          f"{stem}: {_listing(parts)}")
    return parts  # sorted by name, so by part number: the first is what llama.cpp opens


def _listing(names: list[str], most: int = 20) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _snapshot(ref: HubGGUF) -> Path | None:
    """The cached snapshot folder of `ref.revision`: huggingface_hub's layout, read without any request."""
    from huggingface_hub.file_download import repo_folder_name

    storage = cache_dir() / repo_folder_name(repo_id=ref.repo, repo_type="model")
    commit = ref.revision
    if not _COMMIT.match(commit):
        try:
            commit = (storage / "refs" / ref.revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def cached_path(ref: HubGGUF) -> Path | None:
    """The local file to load when it (and every part of a split model) is in the cache; no network."""
    snapshot = _snapshot(ref)
    if snapshot is None:
        return None
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    try:
        parts = select(files, ref)
    except ConfigError:  # not (all) there: a download settles it, with the Hub's file list in any error
        return None
    return snapshot / parts[0]


def download(ref: HubGGUF) -> Path:
    """Fetch the file (every part of a split model) into the cache; returns the path llama.cpp loads."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(ref.repo, revision=ref.revision, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        parts = select(sizes, ref)
        # stdout may be the MCP protocol channel: progress goes to stderr, like huggingface_hub's bars
        sys.stderr.write(f"mcp-conductor: downloading {ref.repo}: {', '.join(parts)} "
                         f"({_size(sum(sizes[p] for p in parts))}) into {cache_dir()}; later runs reuse it\n")
        sys.stderr.flush()
        paths = [hf_hub_download(ref.repo, part, revision=ref.revision) for part in parts]
    except ConfigError:
        raise
    except Exception as exc:
        error = _hub_error(ref, exc)
        if error is None:
            raise
        raise error from None
    return Path(paths[0])


def ensure(ref: HubGGUF) -> Path:
    """The cached file, downloading it first if it is not there."""
    return cached_path(ref) or download(ref)


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("kB", "MB", "GB"):  # decimal units, as the Hub shows sizes
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.2f} {unit}"


def _hub_error(ref: HubGGUF, exc: Exception) -> ConfigError | None:
    """A user's message for what huggingface_hub raised; None for anything not about the Hub or the network."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, cache = constants.ENDPOINT, cache_dir()
    if isinstance(exc, GatedRepoError):
        return ConfigError(f"conductor: field 'hf': repository {ref.repo!r} at {endpoint} is gated: accept its "
                           "terms on its page, then log in (`hf auth login`) or set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return ConfigError(f"conductor: field 'hf': repository {ref.repo!r} not found at {endpoint} (check the id; "
                           "a private repository needs HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return ConfigError(f"conductor: field 'revision': {ref.revision!r} not found in {ref.repo} at {endpoint}")
    if isinstance(exc, OfflineModeIsEnabled) or (constants.HF_HUB_OFFLINE and isinstance(exc, LocalEntryNotFoundError)):
        return ConfigError(f"conductor: field 'hf': {ref.label} is not in the Hugging Face cache ({cache}) and "
                           "HF_HUB_OFFLINE is set, so nothing is downloaded: unset HF_HUB_OFFLINE and run "
                           "`mcp-conductor pull` once with network access")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return ConfigError(f"conductor: field 'file': {ref.pattern!r} is not in {ref.repo} at {endpoint}")
    if isinstance(exc, HfHubHTTPError):
        reason = str(exc).strip().splitlines()[0]
        return ConfigError(f"conductor: field 'hf': the Hub at {endpoint} refused {ref.repo}: {reason}")
    transport = type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES
    if transport or isinstance(exc, (ConnectionError, TimeoutError, LocalEntryNotFoundError)):
        return ConfigError(f"conductor: field 'hf': cannot reach the Hugging Face Hub at {endpoint} "
                           f"({type(exc).__name__}: {exc}) and {ref.label} is not in the cache ({cache}): connect "
                           "to the network (or set HF_ENDPOINT to a reachable mirror) and run `mcp-conductor pull`")
    if isinstance(exc, OSError):
        return ConfigError(f"conductor: field 'hf': downloading {ref.label} into {cache} failed: {exc}")
    return None
