"""Finding dataset files on disk, and downloading them into a cache with sha256 checks.

Lookup order for a dataset's files (all files of one dataset come from one directory):

1. the ``data_dir`` argument,
2. the environment variable ``JMETA_DATA``,
3. the user cache ``$XDG_CACHE_HOME/jmeta`` (default ``~/.cache/jmeta``).

Within a directory ``D`` a file ``GROUP/FILE`` (e.g. ``planetoid/ind.cora.x``) is looked up at
``D/GROUP/FILE`` and then ``D/FILE``. Local files are read as they are. When no directory holds
them, the missing files are downloaded from their public URL into the cache, checked against
`SHA256`, and written atomically (temporary file + rename); a file whose hash does not match is
never kept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from jmeta.io import atomic_write_bytes

DATA_ENV = "JMETA_DATA"

Fetch = Callable[[str], bytes]

PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/{file}"
HETEROPHILOUS_URL = ("https://raw.githubusercontent.com/yandex-research/heterophilous-graphs/"
                     "main/data/{file}")

# sha256 of the files as their public sources publish them. ``ind.pubmed.allx`` lists the
# published file's hash (the copy in the shared datasets folder is a reconstruction).
SHA256: Dict[str, str] = {
    "planetoid/ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "planetoid/ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "planetoid/ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "planetoid/ind.cora.test.index":
        "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "planetoid/ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "planetoid/ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "planetoid/ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "planetoid/ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "planetoid/ind.citeseer.allx":
        "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "planetoid/ind.citeseer.ally":
        "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "planetoid/ind.citeseer.graph":
        "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "planetoid/ind.citeseer.test.index":
        "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    "planetoid/ind.citeseer.tx":
        "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "planetoid/ind.citeseer.ty":
        "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "planetoid/ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "planetoid/ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "planetoid/ind.pubmed.allx": "508e538e2abdccdd54c4d3e9f49d638b4af7107d85845f66ddea5a5152658b7e",
    "planetoid/ind.pubmed.ally": "0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e",
    "planetoid/ind.pubmed.graph":
        "5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9",
    "planetoid/ind.pubmed.test.index":
        "b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5",
    "planetoid/ind.pubmed.tx": "4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d",
    "planetoid/ind.pubmed.ty": "ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd",
    "planetoid/ind.pubmed.x": "fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33",
    "planetoid/ind.pubmed.y": "e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3",
    "heterophilous/chameleon.npz":
        "4c640bd2877fc4f9f101531e2f977bc16445a54e09a5cb01178df608e552f3fd",
    "heterophilous/squirrel.npz":
        "d436e3b42c0546b105241c0ab0766097074e68e55f67b133eeb9b0162e55cbd9",
}


class ChecksumError(ValueError):
  """A downloaded file's sha256 does not match the published one."""


def url_for(relpath: str) -> str:
  """Public URL of ``GROUP/FILE`` (``planetoid`` or ``heterophilous``)."""
  group, file = relpath.split("/", 1)
  if group == "planetoid":
    return PLANETOID_URL.format(file=file)
  if group == "heterophilous":
    return HETEROPHILOUS_URL.format(file=file)
  raise ValueError(f"no download URL for {relpath!r}")


def default_cache_dir() -> Path:
  """``$XDG_CACHE_HOME/jmeta``, or ``~/.cache/jmeta`` when the variable is unset."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "jmeta"


def search_dirs(data_dir: Optional[str | os.PathLike] = None) -> List[Path]:
  """Directories searched, in order: ``data_dir``, ``$JMETA_DATA``, `default_cache_dir`."""
  dirs = []
  if data_dir is not None:
    dirs.append(Path(data_dir).expanduser())
  env = os.environ.get(DATA_ENV)
  if env:
    dirs.append(Path(env).expanduser())
  dirs.append(default_cache_dir())
  out: List[Path] = []
  for d in dirs:
    if d not in out:
      out.append(d)
  return out


def find_local(relpaths: Sequence[str],
               data_dir: Optional[str | os.PathLike] = None) -> Optional[Dict[str, Path]]:
  """Paths of all ``relpaths`` from the first directory (and layout) that holds every one.

  Returns:
    ``{relpath: path}``, or ``None`` when no searched directory holds all of them.
  """
  for d in search_dirs(data_dir):
    for layout in ("grouped", "flat"):
      paths = {}
      for rel in relpaths:
        group, file = rel.split("/", 1)
        paths[rel] = d / group / file if layout == "grouped" else d / file
      if all(p.is_file() for p in paths.values()):
        return paths
  return None


def fetch_url(url: str, timeout: float = 60.0) -> bytes:
  """Downloads ``url`` and returns its bytes (the default fetcher)."""
  with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URLs)
    return resp.read()


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def download(url: str, dest: Path, sha256: Optional[str], fetch: Optional[Fetch] = None) -> Path:
  """Fetches ``url``, checks its sha256 and writes it atomically to ``dest``.

  Raises:
    ChecksumError: the hash differs (nothing is written).
    OSError: the fetch failed.
  """
  fetch = fetch_url if fetch is None else fetch
  data = fetch(url)
  if sha256 is not None:
    got = sha256_bytes(data)
    if got != sha256:
      raise ChecksumError(f"sha256 mismatch for {url}: expected {sha256}, got {got} "
                          f"({len(data)} bytes); the file was not saved to {dest}")
  atomic_write_bytes(dest, data)
  return dest


def ensure_files(relpaths: Sequence[str], data_dir: Optional[str | os.PathLike] = None,
                 fetch: Optional[Fetch] = None) -> Dict[str, Path]:
  """Local paths of ``relpaths`` (``GROUP/FILE``), downloading into the cache if needed.

  Args:
    relpaths: files of one dataset, e.g. ``["heterophilous/chameleon.npz"]``.
    data_dir: searched first (see module docstring).
    fetch: ``url -> bytes``; defaults to `fetch_url`. Tests pass a fake.

  Returns:
    ``{relpath: path}``.

  Raises:
    FileNotFoundError: a file is nowhere on disk and its download failed; the message names
      the file, the directories searched and where to put it.
    ChecksumError: a downloaded file had the wrong sha256.
  """
  found = find_local(relpaths, data_dir)
  if found is not None:
    return found
  dirs = search_dirs(data_dir)
  cache = default_cache_dir()
  out: Dict[str, Path] = {}
  for rel in relpaths:
    dest = cache / rel
    if dest.is_file():
      out[rel] = dest
      continue
    url = url_for(rel)
    try:
      download(url, dest, SHA256.get(rel), fetch)
    except (OSError, http.client.HTTPException) as exc:
      searched = ", ".join(str(d) for d in dirs)
      group, file = rel.split("/", 1)
      raise FileNotFoundError(
          f"dataset file '{file}' not found (searched {searched}; in each, as {rel} and as "
          f"{file}) and downloading it from {url} failed ({type(exc).__name__}: {exc}). "
          f"Put the file at DIR/{rel} and pass data_dir=DIR or set {DATA_ENV}=DIR, or place "
          f"it at {dest}.") from exc
    out[rel] = dest
  return out
